from p4bus.cli import main

main()
