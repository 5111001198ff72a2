"""Reading and writing the archives `docker save` produces and `docker load` accepts."""
