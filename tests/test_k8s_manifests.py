"""The KubeRay manifests under k8s/ and the Dockerfile that builds their image.

Every kustomization is rendered by the real kustomize (`kubectl kustomize`,
v5; skipped where kubectl is absent) and checked against
- the OpenAPI schemas of the KubeRay v1.7.0 CRDs (KUBERAY_CRDS, default
  <repo>/../shared/kuberay-crds), unknown fields rejected;
- the KubeRay operator's own rules that a schema cannot express;
- Ray token authentication on in every RayJob and RayCluster, the token from
  the Secret cgc-ray-auth;
- a NetworkPolicy per RayJob / RayCluster that selects its head pod and admits
  exactly: the cluster's own Ray pods (every port), the KubeRay operator (GCS,
  dashboard, client), a RayJob's submitter (dashboard), Prometheus (metrics);
- lint rules: no literal secrets, GPU groups with GPU limits, tolerations and a
  sized /dev/shm, pinned images, entrypoints that name a script of this repo
  and no shell operators;
- the jobs: every entrypoint's flags accepted by the script's own parse();
  training on fixed-size clusters with --num-workers equal to the GPUs, and
  overlays that differ from the base only in their size flags;
- the Dockerfile: FROM the Ray version of pyproject.toml, the package version
  that the manifests' image tag pins.
The sweep jobs on autoscaled clusters must pass --autoscaling and a
--max-concurrent-trials that fits the largest cluster. Each rule also gets a
broken manifest that it must reject.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
CRDS = Path(os.environ.get("KUBERAY_CRDS", ROOT.parent / "shared" / "kuberay-crds"))
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
RAY_KINDS = ("RayJob", "RayCluster")
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD files are 1-2 MB


def kid(path: Path) -> str:
    return str(path.relative_to(K8S))


# --- rendering: the real kustomize (v5, inside kubectl) -------------------------

KUBECTL = shutil.which("kubectl")


def render(kdir: Path) -> list[dict]:
    """`kubectl kustomize kdir`: the objects kustomize builds, as dicts. Skips
    where kubectl is absent (kustomize v5 ships inside it)."""
    if KUBECTL is None:
        pytest.skip("kubectl not found: the manifests are rendered with the kustomize inside kubectl")
    proc = subprocess.run([KUBECTL, "kustomize", str(kdir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {kdir}: {proc.stderr.strip()}"
    return [doc for doc in yaml.load_all(proc.stdout, Loader=Loader) if doc]


def split_image(ref: str) -> tuple[str, str]:
    """(name, tag) of an image reference; a registry port is not a tag."""
    name, _, tag = ref.rpartition(":")
    return (name, tag) if name and "/" not in tag else (ref, "")


@functools.cache
def _rendered(kdir: Path) -> list[dict]:
    return render(kdir)


def rendered(kdir: Path) -> list[dict]:
    return copy.deepcopy(_rendered(kdir))


def job(kdir: Path = K8S / "base", kind: str = "RayJob") -> dict:
    (obj,) = [o for o in rendered(kdir) if o["kind"] == kind]
    return obj


# --- reading Ray objects -------------------------------------------------------

def cluster_spec(obj: dict) -> dict:
    return obj["spec"]["rayClusterSpec"] if obj["kind"] == "RayJob" else obj["spec"]


def groups(obj: dict) -> list[tuple[str, dict]]:
    spec = cluster_spec(obj)
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


UNITS = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(q) -> float:
    """A Kubernetes quantity ("500m", "64", "512Gi") as a number."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q))
    assert m and m[2] in UNITS, f"not a quantity: {q!r}"
    return float(m[1]) * UNITS[m[2]]


def gpus(container: dict) -> float:
    return quantity(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def script(entrypoint: str) -> str | None:
    m = re.match(r"python3?\s+(\S+\.py)(\s|$)", entrypoint.strip())
    return m and m[1]


def flags(entrypoint: str) -> dict[str, str | None]:
    """--flag value / --switch pairs of a `python script.py ...` command."""
    words, out = shlex.split(entrypoint)[2:], {}
    for i, w in enumerate(words):
        if w.startswith("--"):
            nxt = words[i + 1] if i + 1 < len(words) else None
            out[w] = None if nxt is None or nxt.startswith("--") else nxt
    return out


# --- CRD schemas ---------------------------------------------------------------

def to_jsonschema(s):
    """A Kubernetes structural schema as JSON Schema: int-or-string, nullable,
    preserve-unknown-fields; objects with properties reject unknown fields (the
    API server would silently prune them: typos would vanish). CEL rules
    (x-kubernetes-validations) are left out."""
    if not isinstance(s, dict):
        return s
    out = {}
    for k, v in s.items():
        if k in ("items", "additionalProperties", "not"):
            out[k] = to_jsonschema(v)
        elif k in ("anyOf", "allOf", "oneOf"):
            out[k] = [to_jsonschema(x) for x in v]
        elif k == "properties":
            out[k] = {name: to_jsonschema(x) for name, x in v.items()}
        elif not k.startswith("x-kubernetes-") and k != "nullable":
            out[k] = v
    if s.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if s.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if "properties" in s and "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crd_validators() -> dict:
    files = {kind: CRDS / f"ray.io_{kind.lower()}s.yaml" for kind in RAY_KINDS}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        pytest.skip(f"KubeRay CRDs not found ({', '.join(missing)}); set KUBERAY_CRDS to the directory "
                    "holding ray.io_rayjobs.yaml and ray.io_rayclusters.yaml (KubeRay v1.7.0)")
    validators = {}
    for kind, f in files.items():
        crd = yaml.load(f.read_text(), Loader=Loader)
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        validators[kind] = jsonschema.Draft202012Validator(to_jsonschema(v1["schema"]["openAPIV3Schema"]))
    return validators


def schema_errors(validator, obj: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


# Hand-written schemas for the built-in / third-party kinds k8s/ uses (only the
# fields used); a kind without one here fails test_builtin_kinds.
NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {"type": "object", "required": ["name"],
            "properties": {"name": NAME, "namespace": NAME, "labels": STRINGS, "annotations": STRINGS},
            "additionalProperties": False}
BUILTIN_SCHEMAS = {
    "PodMonitor": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PodMonitor"},
            "metadata": METADATA,
            "spec": {"type": "object", "required": ["selector", "podMetricsEndpoints"], "additionalProperties": False,
                     "properties": {
                         "selector": {"type": "object", "required": ["matchLabels"], "additionalProperties": False,
                                      "properties": {"matchLabels": STRINGS}},
                         "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                             "type": "object", "required": ["port"], "additionalProperties": False,
                             "properties": {
                                 "port": {"type": "string"}, "path": {"type": "string"},
                                 "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
                                 "relabelings": {"type": "array", "items": {
                                     "type": "object", "additionalProperties": False,
                                     "properties": {"sourceLabels": {"type": "array", "items": {"type": "string"}},
                                                    "targetLabel": {"type": "string"}}}}}}}}}}},
    "NetworkPolicy": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "networking.k8s.io/v1"}, "kind": {"const": "NetworkPolicy"},
            "metadata": METADATA,
            "spec": {"type": "object", "required": ["podSelector"], "additionalProperties": False, "properties": {
                "podSelector": {"$ref": "#/$defs/selector"},
                "policyTypes": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}},
                "ingress": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "from": {"type": "array", "items": {
                            "type": "object", "additionalProperties": False, "minProperties": 1,
                            "properties": {"podSelector": {"$ref": "#/$defs/selector"},
                                           "namespaceSelector": {"$ref": "#/$defs/selector"}}}},
                        "ports": {"type": "array", "items": {
                            "type": "object", "additionalProperties": False, "properties": {
                                "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                                "port": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535},
                                                   {"type": "string", "pattern": "^[a-z0-9-]{1,15}$"}]},
                                "endPort": {"type": "integer", "minimum": 1, "maximum": 65535}}}}}}}}}},
        "$defs": {"selector": {"type": "object", "additionalProperties": False,
                               "properties": {"matchLabels": STRINGS}}},
    },
}


# --- the operator's rules (KubeRay v1.7.0 ray-operator/controllers/ray/utils/validation.go) ---

def operator_errors(obj: dict) -> list[str]:
    """What the operator rejects (or silently mishandles) beyond the schema:
    - names: DNS-1035 labels; RayJob <= 47 characters, RayCluster <= 53 (the
      cluster of a RayJob is named <job>-<5 characters>);
    - RayJob: ttlSecondsAfterFinished >= 0 and only with shutdownAfterJobFinishes;
      runtimeEnvYAML (if any) parses as a YAML mapping;
    - every worker group: minReplicas <= replicas <= maxReplicas;
    - rayStartParams: string values only, no `labels` (use the group's labels);
    - Ray resources set once: KubeRay rejects num-cpus/num-gpus/memory/resources
      in rayStartParams together with the group's `resources` field. KubeRay
      derives num-cpus/num-gpus/memory from the Ray container's limits; an
      explicit rayStartParams value overrides that, which is fine when
      deliberate (num-cpus "0" keeps work off the head) but wrong when it
      contradicts the pod: num-gpus must equal the nvidia.com/gpu limit, and a
      non-zero num-cpus / memory must not exceed the cpu / memory limit;
    - autoscaler v2: pod restartPolicy Never or unset;
    - authOptions (validation.go, ValidateRayClusterSpec / ValidateRayJobSpec):
      mode token needs rayVersion >= 2.52.0; enableK8sTokenAuth needs mode
      token, Ray >= 2.55.0 and no secretName, and is refused in a RayJob.
    """
    errs = []
    kind, name, spec = obj["kind"], obj["metadata"]["name"], obj["spec"]
    limit = {"RayJob": 47, "RayCluster": 53}[kind]
    if len(name) > limit:
        errs.append(f"{kind} name {name!r} is longer than {limit} characters")
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        errs.append(f"{kind} name {name!r} is not a DNS-1035 label")
    if kind == "RayJob":
        ttl = spec.get("ttlSecondsAfterFinished", 0)
        if ttl < 0 or (ttl > 0 and not spec.get("shutdownAfterJobFinishes")):
            errs.append("ttlSecondsAfterFinished must be >= 0 and needs shutdownAfterJobFinishes: true")
        try:
            env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
            if not isinstance(env, dict):
                errs.append(f"runtimeEnvYAML is not a YAML mapping: {env!r}")
        except yaml.YAMLError as e:
            errs.append(f"runtimeEnvYAML is not valid YAML: {e}")
    cluster = cluster_spec(obj)
    v2 = cluster.get("enableInTreeAutoscaling") and cluster.get("autoscalerOptions", {}).get("version") == "v2"
    for gname, g in groups(obj):
        if gname != "head":
            lo, hi = g.get("minReplicas", 0), g.get("maxReplicas", 2**31 - 1)
            if not lo <= g.get("replicas", lo) <= hi:
                errs.append(f"group {gname}: needs minReplicas <= replicas <= maxReplicas")
        params = g.get("rayStartParams", {})
        if any(not isinstance(v, str) for v in params.values()):
            errs.append(f"group {gname}: rayStartParams values must be strings: {params}")
        if "labels" in params:
            errs.append(f"group {gname}: rayStartParams['labels'] is not supported; use the group's labels")
        if g.get("resources") and any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
            errs.append(f"group {gname}: resources set both in rayStartParams and in the group's resources")
        limits = containers(g)[0].get("resources", {}).get("limits", {})
        if "num-gpus" in params and quantity(params["num-gpus"]) != gpus(containers(g)[0]):
            errs.append(f"group {gname}: rayStartParams num-gpus {params['num-gpus']} != the container's "
                        f"nvidia.com/gpu limit {limits.get('nvidia.com/gpu', 0)}")
        for param, res in (("num-cpus", "cpu"), ("memory", "memory")):
            if str(params.get(param, "0")) != "0" and res in limits and quantity(params[param]) > quantity(limits[res]):
                errs.append(f"group {gname}: rayStartParams {param} {params[param]} exceeds the {res} limit {limits[res]}")
        if v2 and g["template"]["spec"].get("restartPolicy", "Never") != "Never":
            errs.append(f"group {gname}: autoscaler v2 needs restartPolicy Never or unset")
    auth = cluster.get("authOptions") or {}
    k8s_auth = auth.get("enableK8sTokenAuth") is True
    if auth.get("mode") == "token":
        if not re.fullmatch(r"\d+\.\d+\.\d+", str(cluster.get("rayVersion", ""))):
            errs.append(f"authOptions.mode token needs a rayVersion x.y.z, not {cluster.get('rayVersion')!r}")
        else:
            ray = tuple(map(int, cluster["rayVersion"].split(".")))
            if ray < (2, 52, 0):
                errs.append(f"authOptions.mode token needs Ray >= 2.52.0, not {cluster['rayVersion']}")
            if k8s_auth and ray < (2, 55, 0):
                errs.append(f"authOptions.enableK8sTokenAuth needs Ray >= 2.55.0, not {cluster['rayVersion']}")
        if k8s_auth and auth.get("secretName"):
            errs.append("authOptions.enableK8sTokenAuth and authOptions.secretName are exclusive")
    elif k8s_auth:
        errs.append("authOptions.enableK8sTokenAuth needs authOptions.mode token")
    if kind == "RayJob" and k8s_auth:
        errs.append("authOptions.enableK8sTokenAuth is not supported in a RayJob")
    return errs


# --- lint ----------------------------------------------------------------------

SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.I)
AWS_KEY = re.compile(r"AKIA[0-9A-Z]{16}")
SHELL = re.compile(r"[;&|$`<>\\\n(){}]")


def env_lists(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "env" and isinstance(v, list):
                yield v
            yield from env_lists(v)
    elif isinstance(node, list):
        for v in node:
            yield from env_lists(v)


def lint_errors(obj: dict) -> list[str]:
    """- secrets: no Secret objects; no env var named *KEY*/*SECRET*/*TOKEN*/
      *PASSWORD* with a literal value (container env or runtimeEnvYAML
      env_vars): those come from a Secret (envFrom / secretKeyRef); no string
      that looks like an AWS access key id;
    - GPUs: a container requesting nvidia.com/gpu has an equal limit, GPU pods
      have requests = limits (Guaranteed QoS) and tolerate the nvidia.com/gpu
      taint; a group named *gpu* has GPUs;
    - every Ray container mounts /dev/shm from a memory emptyDir at least as
      large as its group's object-store-memory;
    - images pinned by a tag other than latest;
    - RayJob entrypoints: `python <script>.py ...` with the script in this repo,
      and no shell operators (the submitter pastes the entrypoint unquoted into
      its shell command, so `a && b` would run b in the submitter pod;
      kuberay#3929).
    """
    errs = []
    if obj["kind"] == "Secret":
        errs.append(f"Secret {obj['metadata']['name']} in the manifests: create it with kubectl (k8s/README.md)")
    try:
        runtime_env = yaml.safe_load(obj.get("spec", {}).get("runtimeEnvYAML") or "{}")
    except yaml.YAMLError:
        runtime_env = None  # operator_errors reports it
    env_vars = [{"name": k, "value": v} for k, v in
                (runtime_env.get("env_vars") or {} if isinstance(runtime_env, dict) else {}).items()]
    for env in [*env_lists(obj), env_vars]:
        for e in env:
            if SECRET_NAME.search(e["name"]) and "value" in e:
                errs.append(f"env {e['name']} has a literal value: use a Secret (envFrom / secretKeyRef)")
    if AWS_KEY.search(yaml.safe_dump(obj)):
        errs.append("an AWS access key id is written in the manifest")
    if obj["kind"] not in RAY_KINDS:
        return errs
    for gname, g in groups(obj):
        pod = g["template"]["spec"]
        shm = {v["name"]: v.get("emptyDir", {}) for v in pod.get("volumes", [])}
        for c in containers(g):
            res = c.get("resources", {})
            req, lim = res.get("requests", {}), res.get("limits", {})
            if "nvidia.com/gpu" in req and req["nvidia.com/gpu"] != lim.get("nvidia.com/gpu"):
                errs.append(f"group {gname}: requests nvidia.com/gpu {req['nvidia.com/gpu']} without an equal limit")
            if gpus(c) and req != lim:
                errs.append(f"group {gname}: a GPU container needs requests = limits (Guaranteed QoS)")
            if not c.get("image") or split_image(c["image"])[1] in ("", "latest"):
                errs.append(f"group {gname}: image {c.get('image')!r} is not pinned by a tag")
            mount = [m["name"] for m in c.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
            vol = shm.get(mount[0]) if mount else None
            if not vol or vol.get("medium") != "Memory" or "sizeLimit" not in vol:
                errs.append(f"group {gname}: /dev/shm is not a sized emptyDir with medium Memory")
            elif quantity(vol["sizeLimit"]) < quantity(g.get("rayStartParams", {}).get("object-store-memory", 0)):
                errs.append(f"group {gname}: /dev/shm {vol['sizeLimit']} is smaller than object-store-memory")
        has_gpus = any(gpus(c) for c in containers(g))
        if "gpu" in gname.lower() and not has_gpus:
            errs.append(f"group {gname}: named gpu but no container has an nvidia.com/gpu limit")
        tolerated = any(t.get("key") == "nvidia.com/gpu" and t.get("effect", "NoSchedule") == "NoSchedule"
                        for t in pod.get("tolerations", []))
        if has_gpus and not tolerated:
            errs.append(f"group {gname}: GPU pods do not tolerate the nvidia.com/gpu NoSchedule taint")
    if obj["kind"] == "RayJob":
        entrypoint = obj["spec"]["entrypoint"]
        if SHELL.search(entrypoint.strip()):
            errs.append(f"entrypoint has shell operators, which would run in the submitter pod: {entrypoint!r}")
        path = script(entrypoint)
        if path is None:
            errs.append(f"entrypoint is not `python <script>.py ...`: {entrypoint!r}")
        elif not (ROOT / path).is_file():
            errs.append(f"entrypoint script {path} does not exist in the repository")
    return errs


# --- the manifests as they are -------------------------------------------------

@pytest.mark.parametrize("kdir", KUSTOMIZATIONS, ids=kid)
def test_renders(kdir):
    objs = rendered(kdir)
    assert objs, f"{kid(kdir)} renders nothing"
    keys = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), keys


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS, ids=kid)
def test_ray_objects_match_the_crd_schema(kdir, crd_validators):
    for obj in rendered(kdir):
        if obj["kind"] in RAY_KINDS:
            assert obj["apiVersion"] == "ray.io/v1"
            assert schema_errors(crd_validators[obj["kind"]], obj) == []


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS, ids=kid)
def test_other_kinds_match_their_schema(kdir):
    for obj in rendered(kdir):
        if obj["kind"] not in RAY_KINDS:
            assert obj["kind"] in BUILTIN_SCHEMAS, f"add a schema for {obj['kind']} to BUILTIN_SCHEMAS"
            jsonschema.validate(obj, BUILTIN_SCHEMAS[obj["kind"]])


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS, ids=kid)
def test_operator_rules(kdir):
    assert [e for o in rendered(kdir) if o["kind"] in RAY_KINDS for e in operator_errors(o)] == []


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS, ids=kid)
def test_lint(kdir):
    assert [e for o in rendered(kdir) for e in lint_errors(o)] == []


def imagenet_jobs() -> list[tuple[Path, dict]]:
    return [(k, o) for k in KUSTOMIZATIONS for o in rendered(k)
            if o["kind"] == "RayJob" and script(o["spec"]["entrypoint"]) == "jobs/imagenet.py"]


def test_training_jobs_are_fixed_size_and_valid_configs():
    from cgc_ray.train.config import ConfigError, check, parse  # noqa: PLC0415 (torchvision: only here)

    base = flags(job()["spec"]["entrypoint"])
    jobs = imagenet_jobs()
    assert {kid(k) for k, _ in jobs} >= {"base", "overlays/1x8", "overlays/4x8", "overlays/16x8", "overlays/baseline"}
    for kdir, obj in jobs:
        spec = cluster_spec(obj)
        assert not spec.get("enableInTreeAutoscaling"), f"{kid(kdir)}: DDP training runs on a fixed-size cluster"
        total = 0
        for _, g in groups(obj)[1:]:
            assert g["minReplicas"] == g["replicas"] == g["maxReplicas"], kid(kdir)
            total += g["replicas"] * sum(gpus(c) for c in containers(g))
        entrypoint = obj["spec"]["entrypoint"]
        try:
            cfg = parse(shlex.split(entrypoint)[2:])
            check(cfg, cluster_gpus=total)
        except (SystemExit, ConfigError) as e:  # argparse exits on an unknown flag
            pytest.fail(f"{kid(kdir)}: the entrypoint's flags do not parse ({e}): {entrypoint}")
        used = cfg.num_workers * getattr(cfg, "gpus_per_worker", 1)
        assert cfg.use_gpu and used == total, f"{kid(kdir)}: the workers must use all {total:g} GPUs, not {used:g}"
        assert cfg.objective.recipe == ("baseline" if "baseline" in kid(kdir) else "official"), kid(kdir)
        # The overlays repeat the base entrypoint: only the size flags (with the large batches' warm-up)
        # and the baseline's recipe may differ.
        differ = {f for f in set(base) | set(flags(entrypoint)) if base.get(f) != flags(entrypoint).get(f)}
        assert differ <= {"--num-workers", "--batch-size", "--warmup-epochs", "--name", "--recipe"}, f"{kid(kdir)}: {differ}"
    names = [flags(o["spec"]["entrypoint"])["--name"] for _, o in jobs]
    assert len(names) == len(set(names)), f"two jobs would share a run (and its checkpoints): {names}"
    sizes = {kid(k): cluster_spec(o)["workerGroupSpecs"][0]["replicas"] for k, o in jobs}
    assert (sizes["overlays/1x8"], sizes["overlays/4x8"], sizes["overlays/16x8"]) == (1, 4, 16)


@functools.cache
def job_module(path: str):
    """A job script imported as a module (its top level only: no main())."""
    spec = importlib.util.spec_from_file_location(f"_k8s_job_{Path(path).stem}", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS, ids=kid)
def test_entrypoint_flags_parse(kdir):
    """Every job script's own `parse` (the jobs/ convention) accepts the flags."""
    jobs = [o for o in rendered(kdir) if o["kind"] == "RayJob"]
    for obj in jobs:
        path, entrypoint = script(obj["spec"]["entrypoint"]), obj["spec"]["entrypoint"]
        assert hasattr(job_module(path), "parse"), f"{path} has no parse() to check its flags with"
        try:
            job_module(path).parse(shlex.split(entrypoint)[2:])
        except (SystemExit, ValueError) as e:  # argparse: unknown flag, bad value; ConfigError: a bad combination
            pytest.fail(f"{kid(kdir)}: {path} does not accept its entrypoint's flags ({e}): {entrypoint}")


def test_job_names_are_unique():
    names = [o["metadata"]["name"] for k in KUSTOMIZATIONS for o in rendered(k) if o["kind"] == "RayJob"]
    assert len(names) == len(set(names)), names


SWEEPS = ["experiments/lambda-sweep", "experiments/fewshot"]


@pytest.mark.parametrize("kdir", ["cluster", *SWEEPS])
def test_autoscaled_clusters_use_autoscaler_v2_from_zero_gpu_nodes(kdir):
    (obj,) = [o for o in rendered(K8S / kdir) if o["kind"] in RAY_KINDS]
    spec = cluster_spec(obj)
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["version"] == "v2"
    for gname, g in groups(obj)[1:]:
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1, gname


@pytest.mark.parametrize("kdir", SWEEPS)
def test_sweeps_fit_the_largest_cluster(kdir):
    """A sweep on an autoscaled cluster starts before its GPU nodes exist
    (--autoscaling) and runs no more trials at once than the cluster at its
    maxReplicas holds (each trial: its workers' CPUs and GPUs plus a CPU for input)."""
    from cgc_ray.experiments.runner import max_concurrent_trials  # noqa: PLC0415 (torch: only here)

    (obj,) = [o for o in rendered(K8S / kdir) if o["kind"] == "RayJob"]
    entrypoint = obj["spec"]["entrypoint"]
    req = job_module(script(entrypoint)).parse(shlex.split(entrypoint)[2:])
    assert req.base.autoscaling and req.base.use_gpu, entrypoint
    largest = {"CPU": 0.0, "GPU": 0.0}
    for _, g in groups(obj)[1:]:
        for c in containers(g):
            largest["GPU"] += g["maxReplicas"] * gpus(c)
            largest["CPU"] += g["maxReplicas"] * float(c["resources"]["limits"]["cpu"])
    fits = max_concurrent_trials(largest, req.base.to_dict())
    assert req.args.max_concurrent_trials == fits, f"{kid(K8S / kdir)}: {fits} trials fit, not " \
                                                   f"{req.args.max_concurrent_trials}"


def test_head_takes_no_training_work():
    for kdir in KUSTOMIZATIONS:
        for obj in rendered(kdir):
            if obj["kind"] in RAY_KINDS:
                _, head = groups(obj)[0]
                assert head["rayStartParams"]["num-cpus"] == "0", kid(kdir)
                assert not any(gpus(c) for c in containers(head)), kid(kdir)


def test_s3_credentials_come_from_the_secret():
    for kdir in KUSTOMIZATIONS:
        for obj in rendered(kdir):
            if obj["kind"] in RAY_KINDS:
                for gname, g in groups(obj):
                    refs = [e["secretRef"]["name"] for c in containers(g) for e in c.get("envFrom", [])]
                    assert refs == ["cgc-ray-s3"], f"{kid(kdir)} {gname}"


AUTH_SECRET = "cgc-ray-auth"
AUTH_ENV = re.compile(r"^RAY_AUTH_|^RAY_ENABLE_K8S_TOKEN_AUTH$")


def auth_errors(obj: dict) -> list[str]:
    """Ray token authentication on, with the token from the Secret cgc-ray-auth
    (created with kubectl, k8s/README.md): authOptions exactly {mode: token,
    secretName: cgc-ray-auth}. Without mode: token KubeRay leaves auth off
    (IsAuthEnabled compares the mode; the CRD has no default); without
    secretName it generates a per-cluster Secret that the README's commands do
    not read. No Ray container sets RAY_AUTH_* itself: KubeRay keeps a
    variable that is already there, so RAY_AUTH_MODE=disabled in a pod
    template would switch authentication off behind authOptions' back."""
    errs = []
    auth = cluster_spec(obj).get("authOptions")
    if auth != {"mode": "token", "secretName": AUTH_SECRET}:
        errs.append(f"authOptions must be {{mode: token, secretName: {AUTH_SECRET}}}, not {auth!r}")
    for gname, g in groups(obj):
        pod = g["template"]["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            for e in c.get("env", []):
                if AUTH_ENV.search(e["name"]):
                    errs.append(f"group {gname} container {c['name']}: sets {e['name']}; leave it to authOptions")
    return errs


def test_token_authentication_on_every_ray_cluster():
    checked = []
    for kdir in KUSTOMIZATIONS:
        for obj in rendered(kdir):
            if obj["kind"] in RAY_KINDS:
                assert auth_errors(obj) == [], f"{kid(kdir)}: {auth_errors(obj)}"
                assert cluster_spec(obj)["authOptions"]["mode"] == "token", kid(kdir)
                checked.append((kid(kdir), obj["kind"]))
    # every shipped Ray object was looked at: 8 RayJobs (base, 4 overlays, 3 experiments), 1 RayCluster
    assert sorted(k for _, k in checked) == ["RayCluster"] + ["RayJob"] * 8, checked


# --- the head's NetworkPolicy ----------------------------------------------------

CLUSTER_LABEL = "cgc-ray/cluster"
OPERATOR_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}},
                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}
PROMETHEUS_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                   "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}


def pod_labels(obj: dict, gname: str, group: dict) -> dict[str, str]:
    """The labels KubeRay v1.7.0 gives a pod of this group (common/pod.go
    labelPod): its own, then the template's, which may not override node-type,
    group and cluster. The RayCluster of a RayJob is named <job>-xxxxx."""
    cluster = obj["metadata"]["name"] + ("-xxxxx" if obj["kind"] == "RayJob" else "")
    labels = {"ray.io/is-ray-node": "yes", "ray.io/cluster": cluster,
              "ray.io/node-type": "head" if gname == "head" else "worker",
              "ray.io/group": "headgroup" if gname == "head" else gname,
              "app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}
    for k, v in group["template"]["metadata"].get("labels", {}).items():
        if k not in ("ray.io/node-type", "ray.io/group", "ray.io/cluster"):
            labels[k] = v
    return labels


def head_ports(obj: dict) -> dict[str, int]:
    """The head's ports as Ray starts them (rayStartParams or Ray's defaults),
    which must be the head container's ports of the same name."""
    _, head = groups(obj)[0]
    params = head["rayStartParams"]
    ports = {"gcs-server": int(params.get("port", 6379)), "dashboard": int(params.get("dashboard-port", 8265)),
             "client": int(params.get("ray-client-server-port", 10001)), "metrics": int(params["metrics-export-port"])}
    declared = {p["name"]: p["containerPort"] for p in containers(head)[0]["ports"]}
    assert declared == ports, (f"the head container's ports {declared} are not Ray's {ports} (a port added "
                               "to the head also needs its rule in networkpolicy.yaml and in head_policy_errors)")
    return ports


def rule_key(rule: dict) -> tuple:
    """An ingress rule as (sources, ports); ports None = every port."""
    ports = rule.get("ports")
    return (sorted(yaml.safe_dump(peer, sort_keys=True) for peer in rule.get("from", [])),
            None if ports is None else sorted((p.get("protocol", "TCP"), p["port"], p.get("endPort")) for p in ports))


def head_policy_errors(obj: dict, policies: list[dict]) -> list[str]:
    """The one NetworkPolicy that goes with a RayJob / RayCluster (same name):
    - it selects exactly this cluster's head pod: {cgc-ray/cluster: <name>,
      ray.io/node-type: head}; every Ray pod template carries cgc-ray/cluster
      = the object's name (KubeRay's ray.io/cluster of a RayJob's cluster is
      generated, so this label stands in for it), and no worker matches;
    - policyTypes [Ingress] and exactly these ingress rules:
      the Ray pods of the same cluster (cgc-ray/cluster and
      ray.io/is-ray-node: yes), every port (Ray's internal ports are random);
      the KubeRay operator (namespace kuberay-system, app.kubernetes.io/name
      kuberay-operator) on the GCS, dashboard and client ports; a RayJob's
      submitter pod (ray.io/originated-from-crd RayJob, -cr-name <job>) on the
      dashboard port; Prometheus (namespace monitoring, app.kubernetes.io/name
      prometheus) on the metrics port. Ports as Ray starts them; TCP; no
      endPort ranges."""
    name = obj["metadata"]["name"]
    errs = []
    for gname, g in groups(obj):
        if g["template"]["metadata"].get("labels", {}).get(CLUSTER_LABEL) != name:
            errs.append(f"group {gname}: pod label {CLUSTER_LABEL} must be {name!r}, not "
                        f"{g['template']['metadata'].get('labels', {}).get(CLUSTER_LABEL)!r}")
    mine = [p for p in policies if p["metadata"]["name"] == name]
    if len(mine) != 1:
        names = [p["metadata"]["name"] for p in policies]
        return [*errs, f"{len(mine)} NetworkPolicies named {name!r} (want 1) among {names}"]
    spec = mine[0]["spec"]
    selector = {CLUSTER_LABEL: name, "ray.io/node-type": "head"}
    if spec["podSelector"] != {"matchLabels": selector}:
        errs.append(f"podSelector {spec['podSelector']} is not {{matchLabels: {selector}}}")
    for gname, g in groups(obj):
        matched = spec["podSelector"].get("matchLabels", {}).items() <= pod_labels(obj, gname, g).items()
        if matched != (gname == "head"):
            errs.append(f"podSelector {'selects' if matched else 'misses'} the {gname} pods")
    if spec.get("policyTypes") != ["Ingress"]:
        errs.append(f"policyTypes {spec.get('policyTypes')} is not [Ingress]")
    ports = head_ports(obj)
    same_cluster = {"podSelector": {"matchLabels": {CLUSTER_LABEL: name, "ray.io/is-ray-node": "yes"}}}
    want = [{"from": [same_cluster]},
            {"from": [OPERATOR_PEER], "ports": [{"protocol": "TCP", "port": ports[p]}
                                                for p in ("gcs-server", "dashboard", "client")]},
            {"from": [PROMETHEUS_PEER], "ports": [{"protocol": "TCP", "port": ports["metrics"]}]}]
    if obj["kind"] == "RayJob":
        submitter = {"podSelector": {"matchLabels": {"ray.io/originated-from-crd": "RayJob",
                                                     "ray.io/originated-from-cr-name": name}}}
        want.append({"from": [submitter], "ports": [{"protocol": "TCP", "port": ports["dashboard"]}]})
    got = sorted(map(rule_key, spec.get("ingress", [])))
    if got != sorted(map(rule_key, want)):
        errs.append(f"ingress rules {spec.get('ingress')} are not exactly {want}")
    for gname, g in groups(obj):
        if not same_cluster["podSelector"]["matchLabels"].items() <= pod_labels(obj, gname, g).items():
            errs.append(f"the same-cluster rule does not admit the {gname} pods")
    return errs


def test_every_ray_cluster_has_its_head_network_policy():
    checked = []
    for kdir in KUSTOMIZATIONS:
        objs = rendered(kdir)
        policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
        for obj in [o for o in objs if o["kind"] in RAY_KINDS]:
            assert head_policy_errors(obj, policies) == [], f"{kid(kdir)}: {head_policy_errors(obj, policies)}"
            checked.append(kid(kdir))
        assert len(policies) == len([o for o in objs if o["kind"] in RAY_KINDS]), f"{kid(kdir)}: a stray policy"
    assert len(checked) == 9, checked


def test_head_network_policy_concrete_values():
    """The same, spelled out for the 4 x 8 job and the interactive cluster."""
    (policy,) = [o for o in rendered(K8S / "overlays/4x8") if o["kind"] == "NetworkPolicy"]
    assert policy["metadata"]["name"] == "cgc-r50-4x8"
    assert policy["spec"]["podSelector"] == {"matchLabels": {"cgc-ray/cluster": "cgc-r50-4x8",
                                                             "ray.io/node-type": "head"}}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = {yaml.safe_dump(r["from"], sort_keys=True): sorted(p["port"] for p in r.get("ports", [])) or "all"
             for r in policy["spec"]["ingress"]}
    assert rules == {
        yaml.safe_dump([{"podSelector": {"matchLabels": {"cgc-ray/cluster": "cgc-r50-4x8",
                                                         "ray.io/is-ray-node": "yes"}}}], sort_keys=True): "all",
        yaml.safe_dump([OPERATOR_PEER], sort_keys=True): [6379, 8265, 10001],
        yaml.safe_dump([{"podSelector": {"matchLabels": {"ray.io/originated-from-crd": "RayJob",
                                                         "ray.io/originated-from-cr-name": "cgc-r50-4x8"}}}],
                       sort_keys=True): [8265],
        yaml.safe_dump([PROMETHEUS_PEER], sort_keys=True): [8080],
    }
    for _, g in groups(job(K8S / "overlays/4x8")):
        assert g["template"]["metadata"]["labels"]["cgc-ray/cluster"] == "cgc-r50-4x8"
    (policy,) = [o for o in rendered(K8S / "cluster") if o["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"cgc-ray/cluster": "cgc-ray", "ray.io/node-type": "head"}
    assert sorted(sorted(p["port"] for p in r.get("ports", [])) for r in policy["spec"]["ingress"]) == \
        [[], [6379, 8265, 10001], [8080]]


def test_podmonitor_scrapes_every_ray_pod_on_its_metrics_port():
    (monitor,) = rendered(K8S / "monitoring")
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    for kdir in KUSTOMIZATIONS:
        for obj in rendered(kdir):
            if obj["kind"] not in RAY_KINDS:
                continue
            for gname, g in groups(obj):
                where = f"{kid(kdir)} {gname}"
                meta = g["template"]["metadata"]
                assert selector.items() <= meta["labels"].items(), where
                port = g["rayStartParams"]["metrics-export-port"]
                (c,) = containers(g)
                assert {"name": endpoint["port"], "containerPort": int(port)} in c["ports"], where
                assert meta["annotations"]["prometheus.io/port"] == port, where


# --- the Dockerfile --------------------------------------------------------------

def pyproject() -> tuple[str, SpecifierSet, SpecifierSet]:
    text = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)[1]
    python = SpecifierSet(re.search(r'^requires-python\s*=\s*"([^"]+)"', text, re.M)[1])
    ray = next(Requirement(d) for d in re.findall(r'"(ray\[[^"]*)"', text))
    return version, python, ray.specifier


def dockerfile() -> dict:
    text = (ROOT / "Dockerfile").read_text()
    m = re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-gpu\s*$", text, re.M)
    assert m, "the Dockerfile must start FROM rayproject/ray:<version>-py3<minor>-gpu"
    title = re.search(r'org\.opencontainers\.image\.title="([^"]*)"', text)
    version = re.search(r"^ARG CGC_RAY_VERSION=(\S+)$", text, re.M)
    assert 'org.opencontainers.image.version="${CGC_RAY_VERSION}"' in text
    return {"text": text, "ray": m[1], "python": f"3.{m[2]}", "title": title and title[1],
            "version": version and version[1]}


def test_dockerfile_pins_the_ray_and_package_versions():
    version, python, ray = pyproject()
    d = dockerfile()
    assert d["ray"] in ray, f"FROM rayproject/ray:{d['ray']} is outside pyproject's ray{ray}"
    assert d["python"] in python
    assert d["version"] == version, "the image's version (ARG CGC_RAY_VERSION) must be the package version"
    assert f"ray.__version__ == '{d['ray']}'" in d["text"], "the build checks the Ray version of FROM"
    assert re.search(r"^WORKDIR /\S+", d["text"], re.M) and re.search(r"^COPY .*\s\.\s*$", d["text"], re.M)
    assert "pip install --no-cache-dir ." in d["text"]
    for kdir in KUSTOMIZATIONS:
        for obj in rendered(kdir):
            if obj["kind"] in RAY_KINDS:
                assert cluster_spec(obj)["rayVersion"] == d["ray"], kid(kdir)


def test_manifests_run_the_image_the_dockerfile_builds():
    d = dockerfile()
    for kdir in KUSTOMIZATIONS:
        ray_objs = [o for o in rendered(kdir) if o["kind"] in RAY_KINDS]
        for c in [c for obj in ray_objs for _, g in groups(obj) for c in containers(g)]:
            name, tag = split_image(c["image"])
            assert (name.rsplit("/", 1)[-1], tag) == (d["title"], d["version"]), f"{kid(kdir)}: {c['image']}"
    for f in K8S.rglob("*.yaml"):
        assert "git clone" not in f.read_text(), f"{f}: the code comes from the image"


def test_dockerignore_keeps_runs_git_and_caches_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", "runs/", "**/__pycache__", ".pytest_cache"} <= set(ignored)


# --- the rules must be able to fail ------------------------------------------------

def test_schema_rejects_a_typo(crd_validators):
    obj = job()
    assert schema_errors(crd_validators["RayJob"], obj) == []
    group = obj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group["replica"] = group.pop("replicas")
    assert any("'replica' was unexpected" in e for e in schema_errors(crd_validators["RayJob"], obj))
    cluster = job(K8S / "cluster", "RayCluster")
    cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert any("is not of type 'string'" in e for e in schema_errors(crd_validators["RayCluster"], cluster))
    cluster = job(K8S / "cluster", "RayCluster")
    cluster["spec"]["authOptions"]["mode"] = "Token"  # the enum is disabled / token
    assert any("'Token' is not one of" in e for e in schema_errors(crd_validators["RayCluster"], cluster))
    cluster["spec"]["authOptions"] = {"mode": "token", "secret": "cgc-ray-auth"}
    assert any("'secret' was unexpected" in e for e in schema_errors(crd_validators["RayCluster"], cluster))


def _set(path: str, value):
    def mutate(obj):
        *parents, last = path.split(".")
        node = obj
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[int(last) if isinstance(node, list) else last] = value
    return mutate


RJ = "spec.rayClusterSpec"
WORKER = f"{RJ}.workerGroupSpecs.0"
WORKER_C = f"{WORKER}.template.spec.containers.0"


@pytest.mark.parametrize("mutate,message", [
    (_set("metadata.name", "cgc-" + "x" * 44), "longer than 47"),
    (_set("metadata.name", "4x8-cgc"), "DNS-1035"),
    (_set(f"{WORKER}.minReplicas", 2), "minReplicas <= replicas <= maxReplicas"),
    (_set("spec.shutdownAfterJobFinishes", False), "needs shutdownAfterJobFinishes"),
    (_set(f"{RJ}.headGroupSpec.rayStartParams.num-cpus", 0), "must be strings"),
    (_set(f"{WORKER}.rayStartParams.labels", "a=b"), "labels"),
    (_set(f"{WORKER}.resources", {"GPU": "8"}), "both in rayStartParams and in the group's resources"),
    (_set(f"{WORKER}.rayStartParams.num-gpus", "4"), "num-gpus 4 != the container's nvidia.com/gpu limit 8"),
    (_set(f"{WORKER}.rayStartParams.num-cpus", "96"), "num-cpus 96 exceeds the cpu limit"),
    (_set("spec.runtimeEnvYAML", "- a\n- b\n"), "not a YAML mapping"),
    (_set("spec.runtimeEnvYAML", "env_vars: {a: [\n"), "not valid YAML"),
])
def test_operator_rule_fires(mutate, message):
    obj = job()
    params = obj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"]
    params.update({"num-cpus": "64", "num-gpus": "8"})  # allowed: they agree with the container limits
    assert operator_errors(obj) == []
    mutate(obj)
    assert any(message in e for e in operator_errors(obj)), operator_errors(obj)


@pytest.mark.parametrize("kind,mutate,message", [
    ("RayJob", _set(f"{RJ}.rayVersion", "2.51.0"), "mode token needs Ray >= 2.52.0"),
    ("RayJob", _set(f"{RJ}.authOptions.enableK8sTokenAuth", True), "not supported in a RayJob"),
    ("RayCluster", _set("spec.authOptions.enableK8sTokenAuth", True), "exclusive"),
    ("RayCluster", _set("spec.authOptions", {"mode": "disabled", "enableK8sTokenAuth": True}), "needs authOptions.mode"),
    ("RayCluster", _set("spec.authOptions", {"mode": "token", "enableK8sTokenAuth": True}), None),
])
def test_operator_rule_fires_auth_options(kind, mutate, message):
    obj = job(K8S / "cluster", kind) if kind == "RayCluster" else job()
    assert operator_errors(obj) == []
    mutate(obj)
    if message is None:  # allowed: K8s-delegated auth on a RayCluster with Ray 2.60
        assert operator_errors(obj) == []
    else:
        assert any(message in e for e in operator_errors(obj)), operator_errors(obj)


@pytest.mark.parametrize("kind,mutate,message", [
    ("RayJob", lambda o: o["spec"]["rayClusterSpec"].pop("authOptions"), "not None"),
    ("RayJob", _set(f"{RJ}.authOptions.mode", "disabled"), "'mode': 'disabled'"),
    ("RayCluster", lambda o: o["spec"]["authOptions"].pop("mode"), "not {'secretName'"),
    ("RayCluster", lambda o: o["spec"]["authOptions"].pop("secretName"), "not {'mode': 'token'}"),
    ("RayCluster", _set("spec.authOptions.secretName", "cgc-ray-s3"), "'secretName': 'cgc-ray-s3'"),
    ("RayJob", _set(f"{WORKER_C}.env", [{"name": "RAY_AUTH_MODE", "value": "disabled"}]), "sets RAY_AUTH_MODE"),
    ("RayCluster", _set("spec.headGroupSpec.template.spec.containers.0.env",
                        [{"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "x", "key": "t"}}}]),
     "sets RAY_AUTH_TOKEN"),
])
def test_auth_rule_fires(kind, mutate, message):
    obj = job(K8S / "cluster", kind) if kind == "RayCluster" else job()
    assert auth_errors(obj) == []
    mutate(obj)
    assert any(message in e for e in auth_errors(obj)), auth_errors(obj)


def test_operator_rule_fires_autoscaler_v2_restart_policy():
    obj = job(K8S / "cluster", "RayCluster")
    assert operator_errors(obj) == []
    _set("spec.workerGroupSpecs.0.template.spec.restartPolicy", "Always")(obj)
    assert any("restartPolicy" in e for e in operator_errors(obj))


SECRET_ENV = [{"name": "AWS_SECRET_ACCESS_KEY", "value": "not-a-real-secret"}]


@pytest.mark.parametrize("mutate,message", [
    (_set(f"{WORKER_C}.env", SECRET_ENV), "AWS_SECRET_ACCESS_KEY has a literal value"),
    (_set(f"{RJ}.headGroupSpec.template.spec.containers.0.env", [{"name": "HF_TOKEN", "value": "x"}]),
     "HF_TOKEN has a literal value"),
    (_set("spec.runtimeEnvYAML", "env_vars: {DB_PASSWORD: hunter2}"), "DB_PASSWORD has a literal value"),
    (_set("metadata.labels.note", "AKIA" + "ABCDEFGHIJKLMNOP"), "AWS access key"),
    (_set(f"{WORKER_C}.resources.limits", {"cpu": "64", "memory": "512Gi"}), "without an equal limit"),
    (_set(f"{WORKER_C}.resources.requests.cpu", "32"), "requests = limits"),
    (_set(f"{WORKER_C}.resources", {}), "named gpu but no container has an nvidia.com/gpu limit"),
    (_set(f"{WORKER}.template.spec.tolerations", []), "do not tolerate the nvidia.com/gpu"),
    (_set(f"{WORKER_C}.volumeMounts", []), "/dev/shm is not a sized emptyDir"),
    (_set(f"{WORKER}.template.spec.volumes.0.emptyDir.sizeLimit", "64Gi"), "smaller than object-store-memory"),
    (_set(f"{WORKER_C}.image", "cgc-ray:latest"), "not pinned"),
    (_set(f"{WORKER_C}.image", "cgc-ray"), "not pinned"),
    (_set("spec.entrypoint", "python jobs/imagenett.py --use-gpu"), "jobs/imagenett.py does not exist"),
    (_set("spec.entrypoint", "bash -c 'python jobs/imagenet.py'"), "is not `python <script>.py"),
    (_set("spec.entrypoint", "python jobs/imagenet.py && rm -rf runs"), "shell operators"),
    (_set("spec.entrypoint", "python jobs/imagenet.py --name $RUN"), "shell operators"),
])
def test_lint_rule_fires(mutate, message):
    obj = job()
    assert lint_errors(obj) == []
    mutate(obj)
    assert any(message in e for e in lint_errors(obj)), lint_errors(obj)


def test_lint_rejects_a_committed_secret():
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cgc-ray-s3"},
              "stringData": {"AWS_ACCESS_KEY_ID": "placeholder"}}
    assert any("create it with kubectl" in e for e in lint_errors(secret))


NP = "spec"
ING = f"{NP}.ingress"


@pytest.mark.parametrize("kind,mutate,message", [
    ("RayJob", _set(f"{WORKER}.template.metadata.labels.cgc-ray/cluster", "cgc-r50-4x8"),
     "group gpu: pod label cgc-ray/cluster must be 'cgc-r50'"),
    ("NetworkPolicy", _set("metadata.name", "cgc-r50-head"), "0 NetworkPolicies named 'cgc-r50'"),
    ("NetworkPolicy", _set(f"{NP}.podSelector.matchLabels", {"cgc-ray/cluster": "cgc-r50"}), "selects the gpu pods"),
    ("NetworkPolicy", _set(f"{NP}.podSelector.matchLabels", {"app.kubernetes.io/part-of": "cgc-ray",
                                                             "ray.io/node-type": "head"}), "podSelector"),
    ("NetworkPolicy", lambda p: p["spec"]["podSelector"]["matchLabels"].update({"ray.io/node-type": "worker"}),
     "misses the head pods"),
    ("NetworkPolicy", _set(f"{NP}.policyTypes", ["Ingress", "Egress"]), "policyTypes"),
    ("NetworkPolicy", lambda p: p["spec"]["ingress"][1].pop("ports"), "ingress rules"),  # operator on every port
    ("NetworkPolicy", _set(f"{ING}.1.ports.2.port", 10002), "ingress rules"),
    ("NetworkPolicy", lambda p: p["spec"]["ingress"][1]["ports"].append({"protocol": "TCP", "port": 8080}),
     "ingress rules"),
    ("NetworkPolicy", lambda p: p["spec"]["ingress"][1]["from"][0].pop("namespaceSelector"), "ingress rules"),
    ("NetworkPolicy", _set(f"{ING}.1.from.0.namespaceSelector", {}), "ingress rules"),  # any namespace
    ("NetworkPolicy", lambda p: p["spec"]["ingress"].pop(2), "ingress rules"),  # no submitter: the job cannot start
    ("NetworkPolicy", lambda p: p["spec"]["ingress"][2]["from"][0]["podSelector"]["matchLabels"].update(
        {"ray.io/originated-from-cr-name": "cgc-r50-1x8"}), "ingress rules"),  # another job's submitter
    ("NetworkPolicy", _set(f"{ING}.3.ports.0.port", 8265), "ingress rules"),  # Prometheus on the dashboard
    ("NetworkPolicy", lambda p: p["spec"]["ingress"][3]["from"][0].pop("podSelector"), "ingress rules"),
    ("NetworkPolicy", _set(f"{ING}.0.ports", [{"protocol": "TCP", "port": 1, "endPort": 65535}]), "ingress rules"),
    ("NetworkPolicy", _set(f"{ING}.0.from.0.podSelector.matchLabels", {"ray.io/is-ray-node": "yes"}), "ingress rules"),
    ("NetworkPolicy", lambda p: p["spec"]["ingress"].append({"from": [{"namespaceSelector": {}}]}), "ingress rules"),
    ("NetworkPolicy", lambda p: p["spec"]["ingress"].append({}), "ingress rules"),  # everyone, every port
    ("RayJob", _set(f"{RJ}.headGroupSpec.rayStartParams.dashboard-port", "8266"), "not Ray's"),
])
def test_head_policy_rule_fires(kind, mutate, message):
    objs = rendered(K8S / "base")
    (obj,) = [o for o in objs if o["kind"] == "RayJob"]
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert head_policy_errors(obj, policies) == []
    mutate(obj if kind == "RayJob" else policies[0])
    try:
        errs = head_policy_errors(obj, policies)
    except AssertionError as e:  # head_ports: Ray and the container disagree
        errs = [str(e)]
    assert any(message in e for e in errs), errs


def test_cluster_policy_rule_fires():
    """The interactive cluster has no submitter: a submitter rule is one too many."""
    objs = rendered(K8S / "cluster")
    (obj,) = [o for o in objs if o["kind"] == "RayCluster"]
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert head_policy_errors(obj, policies) == []
    policies[0]["spec"]["ingress"].append(
        {"from": [{"podSelector": {"matchLabels": {"ray.io/originated-from-crd": "RayJob"}}}],
         "ports": [{"protocol": "TCP", "port": 8265}]})
    assert any("ingress rules" in e for e in head_policy_errors(obj, policies))
