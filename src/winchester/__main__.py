from winchester.cli import main

main()
