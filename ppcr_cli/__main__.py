from ppcr_cli.main import main

main()
