import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the interpreter imports the CLI: one line, as in main()
    print("audit: interrupted", file=sys.stderr)
    sys.exit(2)

sys.exit(main())
