from dicomweb.cli import main

# Guarded: worker processes (forkserver) import the main module again, and must not start a server.
if __name__ == "__main__":
    main()
