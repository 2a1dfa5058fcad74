# The image the KubeRay manifests in k8s/ run: this repository with the cgc-ray
# package installed, on the Ray GPU image of the Ray version pyproject.toml pins.
#
#   docker build -t cgc-ray:0.1.0 .
#   docker tag cgc-ray:0.1.0 REGISTRY/cgc-ray:0.1.0 && docker push REGISTRY/cgc-ray:0.1.0
#
# The tag is the package version (pyproject.toml), the tag k8s/ pins;
# tests/test_k8s_manifests.py checks that FROM, this version and k8s/ agree.
FROM rayproject/ray:2.60.0-py311-gpu

ARG CGC_RAY_VERSION=0.1.0
LABEL org.opencontainers.image.title="cgc-ray" \
      org.opencontainers.image.version="${CGC_RAY_VERSION}" \
      org.opencontainers.image.description="CGC training on Ray (jobs/imagenet.py)"

# The job entrypoints (`python jobs/imagenet.py ...`) are relative to this
# directory, where the Ray processes start. Created as the image's user `ray`
# (WORKDIR would create it as root), so that pip can write its build files.
RUN mkdir /home/ray/cgc-ray
WORKDIR /home/ray/cgc-ray
COPY --chown=ray:users . .

# The Ray image has Ray but not PyTorch: this also installs torch/torchvision
# (CUDA wheels from PyPI). The check fails the build if pip resolved another
# Ray, or if the source is not the version the tag claims.
RUN pip install --no-cache-dir . \
 && python -c "import importlib.metadata as m, ray; \
v = m.version('cgc-ray'); assert v == '${CGC_RAY_VERSION}', v; \
assert ray.__version__ == '2.60.0', ray.__version__"
