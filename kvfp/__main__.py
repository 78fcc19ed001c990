from kvfp.cli.app import main

# guarded: spawned worker processes import this module again and must not rerun the CLI
if __name__ == "__main__":
    main()
