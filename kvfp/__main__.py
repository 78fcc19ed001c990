from kvfp.cli.app import main

main()
