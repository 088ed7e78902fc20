"""Making masters: `make` turns one received file into a verified layered lossless JPEG 2000 master
file (the codec work itself is storage.codec.layered_j2k); `queue` is the durable background queue
that runs `make` for every received instance and swaps the master in."""
