"""The checkpoint reader that runs no code (audit/model/inert.py): stand-ins for code, and no
pickle opcode that changes the program itself."""
import collections
import io
import pickle

import pytest
import torch

from audit.model.inert import Inert, _pickle_module, load_inert


class Config:  # a class of the user's, as Lightning's hyper_parameters hold
    def __init__(self):
        self.lr = 0.1


def test_a_build_on_an_allowed_class_is_refused_and_changes_nothing():
    """GLOBAL collections.Counter; (None, {'most_common': 7}); BUILD would setattr on the real class."""
    payload = b"\x80\x02ccollections\nCounter\nN}X\x0b\x00\x00\x00most_commonK\x07s\x86b."
    with pytest.raises(pickle.UnpicklingError, match="a class or function"):
        _pickle_module(set()).Unpickler(io.BytesIO(payload)).load()
    assert callable(collections.Counter.most_common)


def test_tensors_load_and_code_becomes_stand_ins(tmp_path):
    sd = torch.nn.Linear(3, 2).state_dict()  # an OrderedDict with _metadata set by BUILD: still built
    torch.save({"state_dict": sd, "hyper_parameters": {"cfg": Config()}}, tmp_path / "c.ckpt")
    obj, names = load_inert(tmp_path / "c.ckpt")
    assert torch.equal(obj["state_dict"]["weight"], sd["weight"]) and hasattr(obj["state_dict"], "_metadata")
    assert isinstance(obj["hyper_parameters"]["cfg"], Inert) and names == [f"{__name__}.Config"]
