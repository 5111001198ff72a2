"""The image vocabulary, after go-containerregistry's pkg/v1: what an OCI/Docker image and a
CNB image are, whatever they are read from or written to.

layer       the Layer protocol every layer source implements, chain IDs
mediatypes  OCI and Docker media types
manifest    descriptors, manifests and indexes (written and read)
config      reading an image config
inspected   an image as a daemon describes it (InspectedImage)
cnb         the Cloud Native Buildpacks model: labels, lifecycle metadata, run images, time

Nothing here imports from the rest of packcache but errors and refs.
"""
