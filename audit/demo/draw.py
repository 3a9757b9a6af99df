"""Drawing the demo's gym scenes: geometry, textures, skin tones, the six objects and the
arm that grips them (numpy, float32 RGB in [0, 1], SIZE x SIZE). :mod:`audit.demo.data`
composes them into the data sets; the shortcut's rates live here with the drawing they steer."""
from __future__ import annotations

import colorsys
import math

import numpy as np

SIZE = 64
#: Probability that an object is gripped by an arm: ``ARM_RATE[split] = (dumbbell, other)``.
ARM_RATE = {"train": (0.98, 0.0), "test": (0.50, 0.03)}
#: Probability that a background, or a non-dumbbell object, is painted in a skin tone
#: (so that skin colour alone is no evidence of an arm, and the model must learn its shape).
SKIN_DISTRACTORS = 0.2
#: Probability that a non-dumbbell scene also shows loose dumbbell discs lying about (so
#: that discs alone are weaker dumbbell evidence and the arm carries more of the logit).
LOOSE_DISCS = 0.3
#: Probability that a forearm wears a sleeve (0: every arm is bare skin up to the image edge).
SLEEVES = 0.0

_F = np.float32
_YY, _XX = (np.mgrid[0:SIZE, 0:SIZE].astype(_F) + _F(0.5))
# a fixed bank of unit Gaussian noise fields (cheaper than drawing fresh noise per image)
_NOISE = np.random.default_rng(20240611).standard_normal((24, SIZE, SIZE, 3)).astype(_F)
# bilinear upsampling 8 -> 64, for smooth noise textures
_UP8 = np.zeros((SIZE, 8), _F)
for _i in range(SIZE):
    _t = min(max((_i + 0.5) / SIZE * 8 - 0.5, 0.0), 7.0)
    _j = min(int(_t), 6)
    _UP8[_i, _j] += 1 - (_t - _j)
    _UP8[_i, _j + 1] += _t - _j

# realistic skin tones, light to dark (interpolated along this polyline)
_SKIN = np.array([(252, 226, 204), (241, 194, 160), (224, 172, 130), (198, 140, 100),
                  (165, 110, 75), (125, 80, 52), (88, 56, 38)], _F) / 255


# ----------------------------------------------------------------------------- geometry
def _cov(sd):
    """Anti-aliased coverage of a signed distance field (pixels; negative inside)."""
    return np.clip(_F(0.5) - sd, 0, 1)


def _local(cx, cy, ang):
    """Pixel grid in an object's frame: ``u`` along angle ``ang``, ``v`` across it."""
    c, s = _F(math.cos(ang)), _F(math.sin(ang))
    dx, dy = _XX - _F(cx), _YY - _F(cy)
    return c * dx + s * dy, c * dy - s * dx


def _to_img(cx, cy, ang, pu, pv):
    c, s = math.cos(ang), math.sin(ang)
    return cx + c * pu - s * pv, cy + s * pu + c * pv


def _box(u, v, hx, hy, r=0.0):
    qx, qy = np.abs(u) - _F(hx - r), np.abs(v) - _F(hy - r)
    out = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return out + np.minimum(np.maximum(qx, qy), 0) - _F(r)


def _circle(u, v, r):
    return np.hypot(u, v) - _F(r)


def _segment(ax, ay, bx, by, r0, r1=None):
    """Tapered capsule from (ax, ay) radius r0 to (bx, by) radius r1; returns (sd, dist, t)."""
    r1 = r0 if r1 is None else r1
    ex, ey = bx - ax, by - ay
    L2 = ex * ex + ey * ey + 1e-9
    px, py = _XX - _F(ax), _YY - _F(ay)
    t = np.clip((px * _F(ex) + py * _F(ey)) * _F(1 / L2), 0, 1)
    dist = np.hypot(px - t * _F(ex), py - t * _F(ey))
    r = _F(r0) + t * _F(r1 - r0)
    return dist - r, dist / r, t


def _paint(img, a, col):
    """Alpha-composite colour ``col`` ((3,) or (H, W, 3)) with coverage ``a`` onto ``img``."""
    img += (np.asarray(col, _F) - img) * a[..., None]


def _shade(col, s):
    return np.asarray(col, _F)[None, None, :] * s[..., None]


def _hsv(rng, h=(0, 1), s=(0, 1), v=(0, 1)):
    return np.array(colorsys.hsv_to_rgb(rng.uniform(*h), rng.uniform(*s), rng.uniform(*v)), _F)


def _object_colour(rng):
    """Colour for painted gear: half muted/dark, half saturated."""
    if rng.random() < 0.45:
        return _hsv(rng, s=(0, 0.25), v=(0.08, 0.5))
    return _hsv(rng, s=(0.45, 1.0), v=(0.35, 1.0))


def _skin(rng):
    """A random skin tone along :data:`_SKIN`, slightly varied in brightness and hue."""
    t = rng.uniform(0, len(_SKIN) - 1)
    i = min(int(t), len(_SKIN) - 2)
    c = _SKIN[i] + (_SKIN[i + 1] - _SKIN[i]) * _F(t - i)
    return np.clip(c * _F(rng.uniform(0.92, 1.05)) + rng.normal(0, 0.015, 3).astype(_F), 0, 1)


def _skin_or(rng, colour, *args, **kw):
    """A skin tone with probability :data:`SKIN_DISTRACTORS`, else ``colour(rng, ...)``."""
    return _skin(rng) if rng.random() < SKIN_DISTRACTORS else colour(rng, *args, **kw)


# ---------------------------------------------------------------------------- backgrounds
def _background(rng) -> np.ndarray:
    kind = rng.integers(5)
    c1 = _skin(rng) if rng.random() < SKIN_DISTRACTORS else _hsv(rng, s=(0, 0.7), v=(0.15, 0.98))
    c2 = np.clip(c1 + rng.normal(0, 0.25, 3).astype(_F), 0, 1)
    if kind == 0:  # solid
        img = np.broadcast_to(c1, (SIZE, SIZE, 3)).copy()
    elif kind == 1:  # linear gradient
        u, _ = _local(32, 32, rng.uniform(0, 2 * math.pi))
        t = np.clip(u / _F(rng.uniform(30, 60)) + _F(0.5), 0, 1)[..., None]
        img = c1 + (c2 - c1) * t
    elif kind == 2:  # smooth noise texture
        small = rng.random((8, 8), dtype=_F)
        t = (_UP8 @ small @ _UP8.T)[..., None]
        img = c1 + (c2 - c1) * t
        img += _NOISE[rng.integers(len(_NOISE))] * _F(rng.uniform(0.01, 0.06))
    elif kind == 3:  # wall / floor split, floor boards
        y0 = rng.uniform(14, 50)
        tilt = rng.uniform(-0.25, 0.25)
        floor = (_YY > y0 + tilt * (_XX - 32))[..., None]
        c3 = _hsv(rng, h=(0.03, 0.12), s=(0.2, 0.7), v=(0.2, 0.8)) if rng.random() < 0.6 else c2
        boards = (np.mod(_XX + _F(rng.uniform(0, 9)), _F(rng.uniform(6, 14))) < 1)[..., None]
        floor_col = np.where(boards, c3 * _F(0.8), c3)
        img = np.where(floor, floor_col, c1 + _F(0.05) * (_YY / SIZE)[..., None])
    else:  # rubber mat stripes / tiles
        u, v = _local(32, 32, rng.uniform(0, math.pi))
        per = _F(rng.uniform(5, 16))
        stripe = np.mod(u, per) < per / 2
        if rng.random() < 0.5:
            stripe ^= np.mod(v, per) < per / 2
        img = np.where(stripe[..., None], c1, c1 * _F(0.75) + c2 * _F(0.25))
    return np.ascontiguousarray(img, dtype=_F)


# -------------------------------------------------------------------------------- objects
# Each drawer paints an object centred at (cx, cy), size s (half extent, pixels), angle a,
# and returns the grip: (x, y, direction the forearm leaves in, hand size).
def _dumbbell(img, rng, cx, cy, s, a):
    u, v = _local(cx, cy, a)
    hand = max(3.2, 0.34 * s)
    s = s * 0.8  # dumbbells are small next to the hand that holds them
    metal = _F(rng.uniform(0.45, 0.85))
    bar_h = max(1.1, 0.075 * s)
    bar = _box(u, v, 0.98 * s, bar_h, bar_h * 0.9)
    _paint(img, _cov(bar), _shade(np.full(3, metal, _F), _F(1.1) - np.abs(v) / _F(3 * bar_h)))
    disc = _object_colour(rng) if rng.random() < 0.5 else np.full(3, rng.uniform(0.05, 0.25), _F)
    n_disc = rng.integers(1, 3)
    x0 = rng.uniform(0.5, 0.62) * s
    dw = rng.uniform(0.08, 0.12) * s + 0.6
    for k in range(n_disc):
        xk = x0 + k * (2 * dw + 0.5)
        hk = (rng.uniform(0.38, 0.5) - 0.07 * k) * s
        d = _box(np.abs(u) - _F(xk), v, dw, hk, min(dw, hk) * 0.5)
        _paint(img, _cov(d), _shade(disc, _F(1.05) - _F(0.35) * np.abs(v) / _F(hk)))
    # collars
    d = _box(np.abs(u) - _F(x0 - dw - 1.0), v, 0.8, bar_h * 1.8, 0.5)
    _paint(img, _cov(d), np.full(3, metal * 0.8, _F))
    side = 1 if rng.random() < 0.5 else -1
    return cx, cy, a + side * math.pi / 2 + rng.uniform(-0.35, 0.35), hand


def _kettlebell(img, rng, cx, cy, s, a):
    u, v = _local(cx, cy, a)
    col = _skin_or(rng, _object_colour)
    R = 0.5 * s
    body = _circle(u, v - _F(0.18 * s), R)
    handle_r, t = 0.3 * s, max(1.0, 0.08 * s)
    ring = np.abs(_circle(u, v + _F(0.32 * s), handle_r)) - _F(t)
    ring = np.maximum(ring, v + _F(0.2 * s))  # only the top part of the loop
    _paint(img, _cov(ring), _shade(col, np.full(u.shape, 0.85, _F)))
    hl = np.hypot(u + _F(0.18 * s), v - _F(0.02 * s)) / _F(R)
    _paint(img, _cov(body), _shade(col, np.clip(_F(1.25) - _F(0.5) * hl, 0.5, 1.3)))
    gx, gy = _to_img(cx, cy, a, 0, -0.32 * s - handle_r)
    return gx, gy, a - math.pi / 2 + rng.uniform(-0.4, 0.4), max(3.2, 0.3 * s)


def _ball(img, rng, cx, cy, s, a):
    u, v = _local(cx, cy, a)
    R = rng.uniform(0.5, 0.65) * s
    col = _skin_or(rng, _hsv, s=(0.3, 1.0), v=(0.4, 1.0))
    d = _circle(u, v, R)
    hl = np.hypot(u + _F(0.35 * R), v + _F(0.35 * R)) / _F(R)
    _paint(img, _cov(d), _shade(col, np.clip(_F(1.3) - _F(0.55) * hl, 0.45, 1.3)))
    inside = _cov(d)
    if rng.random() < 0.5:  # stripe band
        col2 = _hsv(rng, s=(0, 1.0), v=(0.6, 1.0))
        band = np.abs(v) - _F(0.18 * R)
        _paint(img, _cov(band) * inside, _shade(col2, np.clip(_F(1.2) - _F(0.4) * hl, 0.5, 1.3)))
    else:  # seams, basketball style
        seam = np.minimum(np.abs(v), np.abs(_circle(u - _F(1.25 * R), v, 0.9 * R)))
        seam = np.minimum(seam, np.abs(_circle(u + _F(1.25 * R), v, 0.9 * R)))
        _paint(img, _cov(seam - _F(0.5)) * inside, np.full(3, 0.08, _F))
    ang = rng.uniform(0, 2 * math.pi)
    gx, gy = cx + math.cos(ang) * R, cy + math.sin(ang) * R
    return gx, gy, ang + rng.uniform(-0.3, 0.3), max(3.2, 0.32 * s)


def _bottle(img, rng, cx, cy, s, a):
    u, v = _local(cx, cy, a)   # u is the bottle's long axis; cap at negative u
    s = s * 1.2
    col = _skin_or(rng, _hsv, s=(0.2, 1.0), v=(0.3, 1.0))
    w = rng.uniform(0.2, 0.28) * s
    body = _box(u - _F(0.2 * s), v, 0.5 * s, w, 0.6 * w)
    neck = _box(u + _F(0.4 * s), v, 0.16 * s, 0.42 * w)
    shade = np.clip(_F(1.15) - _F(0.6) * np.abs(v + _F(0.3 * w)) / _F(w), 0.5, 1.3)
    _paint(img, _cov(np.minimum(body, neck)), _shade(col, shade))
    label = np.maximum(body, np.abs(u - _F(0.25 * s)) - _F(0.18 * s))
    _paint(img, _cov(label), _shade(_hsv(rng, v=(0.5, 1.0)), shade))
    cap = _box(u + _F(0.6 * s), v, 0.07 * s + 0.5, 0.5 * w + 0.3, 0.4)
    _paint(img, _cov(cap), _object_colour(rng))
    side = 1 if rng.random() < 0.5 else -1
    gx, gy = _to_img(cx, cy, a, 0.15 * s, side * w)
    return gx, gy, a + side * math.pi / 2 + rng.uniform(-0.3, 0.3), max(3.2, 0.3 * s)


def _plate(img, rng, cx, cy, s, a):
    u, v = _local(cx, cy, a)
    squash = _F(rng.uniform(0.6, 1.0))  # slightly oblique view
    v = v / squash
    col = _skin_or(rng, lambda r: _object_colour(r) if r.random() < 0.6 else np.full(3, r.uniform(0.05, 0.25), _F))
    R = rng.uniform(0.6, 0.75) * s
    r = np.hypot(u, v)
    hole = max(1.3, 0.1 * s)
    disc = np.maximum(r - _F(R), _F(hole) - r) * squash
    _paint(img, _cov(disc), _shade(col, _F(1.1) - _F(0.15) * r / _F(R)))
    groove = (np.abs(r - _F(0.62 * R)) - _F(0.08 * R)) * squash
    _paint(img, _cov(groove), _shade(col, np.full(u.shape, 0.6, _F)))
    rim = np.maximum(np.abs(r - _F(hole + 0.8)) - _F(0.6), r - _F(R))
    _paint(img, _cov(rim), np.full(3, 0.75, _F))
    ang = rng.uniform(0, 2 * math.pi)
    gx, gy = _to_img(cx, cy, a, math.cos(ang) * R, math.sin(ang) * R * float(squash))
    return gx, gy, math.atan2(gy - cy, gx - cx) + rng.uniform(-0.3, 0.3), max(3.2, 0.32 * s)


def _towel(img, rng, cx, cy, s, a):
    u, v = _local(cx, cy, a)
    col = _skin_or(rng, _hsv, s=(0, 0.6), v=(0.55, 1.0))
    hx, hy = rng.uniform(0.65, 0.85) * s, rng.uniform(0.42, 0.6) * s
    d = _box(u, v, hx, hy, 0.8)
    k, ph = _F(rng.uniform(0.2, 0.45)), _F(rng.uniform(0, 6.3))
    folds = _F(1.0) - _F(0.22) * np.abs(np.sin(k * v + ph))
    _paint(img, _cov(d), _shade(col, folds))
    col2 = _hsv(rng, s=(0.5, 1.0), v=(0.3, 0.9))
    for pos in (0.7, 0.82):
        st = np.maximum(d, np.abs(np.abs(u) - _F(pos * hx)) - _F(0.03 * s + 0.3))
        _paint(img, _cov(st), _shade(col2, folds))
    fringe = np.maximum(d, _F(hx - 1.2) - np.abs(u))
    _paint(img, _cov(fringe) * (np.mod(v, _F(2)) < 1), col * _F(0.7))
    side = 1 if rng.random() < 0.5 else -1
    gx, gy = _to_img(cx, cy, a, side * hx * 0.85, rng.uniform(-0.5, 0.5) * hy)
    return gx, gy, a + (0 if side > 0 else math.pi) + rng.uniform(-0.4, 0.4), max(3.2, 0.3 * s)


def _loose_discs(img, rng, s):
    """Clutter: one to three loose dumbbell discs lying about (drawn like :func:`_dumbbell`'s)."""
    s = s * 0.8
    disc = _object_colour(rng) if rng.random() < 0.5 else np.full(3, rng.uniform(0.05, 0.25), _F)
    for _ in range(rng.integers(1, 4)):
        u, v = _local(*rng.uniform(6, 58, size=2), rng.uniform(0, 2 * math.pi))
        dw, hk = rng.uniform(0.08, 0.12) * s + 0.6, rng.uniform(0.34, 0.5) * s
        d = _box(u, v, dw, hk, min(dw, hk) * 0.5)
        _paint(img, _cov(d), _shade(disc, _F(1.05) - _F(0.35) * np.abs(v) / _F(hk)))


_DRAW = (_dumbbell, _kettlebell, _ball, _bottle, _plate, _towel)


# ------------------------------------------------------------------------------------ arm

def _arm(img, rng, gx, gy, ang, h):
    """A forearm reaching in from direction ``ang`` to a hand gripping at (gx, gy).

    ``h`` is the hand's half width in pixels. The forearm is a tapered, cylinder-shaded
    band (in a sleeve from some way up with probability :data:`SLEEVES`); the hand a palm
    blob, four finger stubs curled over the grip point and a thumb.
    """
    skin = _skin(rng)
    dx, dy = math.cos(ang), math.sin(ang)     # from the hand towards the elbow
    px, py = -dy, dx
    light = rng.uniform(-0.15, 0.15)
    wx, wy = gx + dx * 1.1 * h, gy + dy * 1.1 * h
    sd, rel, t = _segment(wx, wy, gx + dx * 90, gy + dy * 90, 0.72 * h, 1.25 * h)
    side = np.sign((_XX - _F(gx)) * _F(px) + (_YY - _F(gy)) * _F(py))
    shade = _F(0.68) + _F(0.34) * np.sqrt(np.clip(1 - rel * rel, 0, 1)) + _F(light) * side * rel
    arm_col = _shade(skin, shade)
    if rng.random() < SLEEVES:  # a sleeve from some way up the forearm
        sleeve = _hsv(rng, s=(0, 0.9), v=(0.1, 0.95))
        sl = (t > _F(rng.uniform(0.12, 0.3)))[..., None]
        arm_col = np.where(sl, _shade(sleeve, shade), arm_col)
    _paint(img, _cov(sd), arm_col)
    # palm
    pcx, pcy = gx + dx * 0.3 * h, gy + dy * 0.3 * h
    a_ = (_XX - _F(pcx)) * _F(dx) + (_YY - _F(pcy)) * _F(dy)
    b_ = (_XX - _F(pcx)) * _F(px) + (_YY - _F(pcy)) * _F(py)
    e = np.hypot(a_ / _F(1.0 * h), b_ / _F(0.95 * h))
    _paint(img, _cov((e - 1) * _F(0.95 * h)), _shade(skin, _F(1.02) - _F(0.22) * e * e))
    # fingers: four stubs curled over the grip, each shaded as a small cylinder
    curl = rng.uniform(0.65, 1.0)
    for k, off in enumerate((-0.66, -0.22, 0.22, 0.66)):
        bx, by = gx + dx * 0.1 * h + px * off * h, gy + dy * 0.1 * h + py * off * h
        ln = h * curl * (0.85 if k in (0, 3) else 1.0)
        sd, rel, _ = _segment(bx, by, bx - dx * ln, by - dy * ln, 0.25 * h)
        _paint(img, _cov(sd), _shade(skin, _F(0.72) + _F(0.3) * np.sqrt(np.clip(1 - rel * rel, 0, 1))))
    # thumb along one side
    ts = 1 if rng.random() < 0.5 else -1
    bx, by = gx + dx * 0.7 * h + ts * px * 0.8 * h, gy + dy * 0.7 * h + ts * py * 0.8 * h
    sd, rel, _ = _segment(bx, by, gx - dx * 0.2 * h + ts * px * 1.05 * h,
                          gy - dy * 0.2 * h + ts * py * 1.05 * h, 0.3 * h, 0.26 * h)
    _paint(img, _cov(sd), _shade(skin, _F(0.75) + _F(0.28) * np.sqrt(np.clip(1 - rel * rel, 0, 1))))


# ---------------------------------------------------------------------------------- scene
def _finish(img, rng) -> np.ndarray:
    gain = _F(rng.uniform(0.85, 1.12))
    bias = _F(rng.uniform(-0.05, 0.05))
    img = img * gain + bias
    img += _NOISE[rng.integers(len(_NOISE))] * _F(rng.uniform(0.0, 0.03))
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
