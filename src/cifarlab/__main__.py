try:
    from cifarlab.cli import main
except KeyboardInterrupt:  # Ctrl-C before main() could take over: as main() says it
    import sys

    print("interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
