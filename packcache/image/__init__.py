"""The image vocabulary: what an OCI/Docker image and a CNB image are, independent of where
they are read from or written to."""
