from .backend import main

main()
