from dicomweb.cli import main

main()
