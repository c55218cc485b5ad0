"""Building and running cluster/Dockerfile here, with podman: the stand-in base
(`standin`), the image build (`build`), the weight cache a container mounts (`weights`) and
podman's settings and cleanup (`podman`). Used by tests/test_image_podman.py and
benchmarks/image.py; not part of the installed package."""
