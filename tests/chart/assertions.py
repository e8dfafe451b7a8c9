"""Semantic assertions on the rendered chart and on deploy/: what schema validation and checkov cannot see.

Usage: python assertions.py RENDER_DIR DEPLOY_DIR CHART_DIR [WORK_DIR]
RENDER_DIR holds one <value-set>.yaml per chart value set (helm template output).
Prints one line per assertion, "ok   <name>" or "FAIL <name>: <why>", and exits 1 if any failed.
"""

import re
import sys
from pathlib import Path

import yaml

# The program's metric contract (README of the issue); alerts may use nothing else.
CONTRACT_METRICS = {
    "ls_token_refresher_refresh_total",
    "ls_token_refresher_refresh_errors_total",
    "ls_token_refresher_refresh_duration_seconds",
    "ls_token_refresher_token_expiration_timestamp_seconds",
    "ls_token_refresher_next_refresh_timestamp_seconds",
    "ls_token_refresher_last_success_timestamp_seconds",
    "ls_token_refresher_pat_expiration_timestamp_seconds",
    "ls_token_refresher_token_valid",
    "ls_token_refresher_sink_write_errors_total",
    "ls_token_refresher_build_info",
    # Controller mode, per LabelStudioToken resource.
    "ls_token_refresher_controller_token_ready",
    "ls_token_refresher_controller_token_expiration_timestamp_seconds",
    # Issue 16: 1 on the replica that leads (always 1 without election); the token alerts skip standbys.
    "ls_token_refresher_leader",
    # Issue 17: PAT rotation (result rotated, recovered, failed or refused) and the PAT's iat (0 if unknown).
    "ls_token_refresher_pat_rotations_total",
    "ls_token_refresher_pat_issued_timestamp_seconds",
}
CONTRACT_ROTATION_RESULTS = {"rotated", "recovered", "failed", "refused"}
ROTATION_ENV = {"LS_ROTATE_PAT_EVERY", "LS_ROTATE_PAT_BEFORE_EXPIRY"}
# Objects without a namespace.
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "LabelStudioConnection"}
CONTRACT_REASONS = {
    "unauthorized", "expired_pat", "revoked_pat", "wrong_token_type", "inactive_user", "bad_request",
    "server_error", "rate_limited", "timeout", "network", "tls", "invalid_response", "validation_failed",
    "jwt_disabled", "legacy_disabled", "source_unavailable",
}
REQUIRED_ALERTS = {
    "LSTokenRefresherRefreshFailing",
    "LSTokenRefresherTokenExpiringSoon",
    "LSTokenRefresherTokenExpired",
    "LSTokenRefresherNoRecentSuccess",
    "LSTokenRefresherPATExpiringSoon",
    "LSTokenRefresherPATRotationFailing",
}

results = []


def check(name):
    def wrap(fn):
        try:
            fn()
            results.append((name, None))
        except AssertionError as e:
            results.append((name, str(e) or "assertion failed"))
        except Exception as e:  # a crash in an assertion is a failure too
            results.append((name, f"{type(e).__name__}: {e}"))
        return fn
    return wrap


class _StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; Kubernetes clients (and the e2e crate's parser) reject them."""


def _no_duplicates(loader, node, deep=False):
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {sorted(dup)}", node.start_mark)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load(path):
    return [d for d in yaml.load_all(Path(path).read_text(), Loader=_StrictLoader) if d]


def kind(docs, k):
    return [d for d in docs if d.get("kind") == k]


def one(docs, k):
    found = kind(docs, k)
    assert len(found) == 1, f"expected one {k}, found {len(found)}"
    return found[0]


def pod_spec(obj):
    spec = obj["spec"]
    return spec["template"]["spec"] if "template" in spec else spec


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def all_containers(ps):
    return ps.get("initContainers", []) + ps.get("containers", [])


def hardened(c, where):
    sc = c.get("securityContext", {})
    assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation is not false"
    assert sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem is not true"
    assert sc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot is not true"
    assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{where}: capabilities not dropped"
    assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: no RuntimeDefault seccomp"
    res = c.get("resources", {})
    assert res.get("requests") and res.get("limits"), f"{where}: resources incomplete"


def http_path(probe):
    return (probe or {}).get("httpGet", {}).get("path")


render_dir, deploy_dir, chart_dir = (Path(a) for a in sys.argv[1:4])
# check.sh's work directory (the parent-chart and sidecar-context renders); optional.
work_dir = Path(sys.argv[4]) if len(sys.argv) > 4 else None
renders = {p.stem: load(p) for p in sorted(render_dir.glob("*.yaml"))}
chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
values = yaml.safe_load((chart_dir / "values.yaml").read_text())

# --- the chart's Deployment (secret mode) -------------------------------------------------------------------------
def is_controller(obj):
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "controller"


def run_dep(docs):
    """The `run` Deployment (the controller's has its own checks below)."""
    found = [d for d in kind(docs, "Deployment") if not is_controller(d)]
    assert len(found) == 1, f"expected one run Deployment, found {len(found)}"
    return found[0]


def run_roles(docs, k="Role"):
    return [r for r in kind(docs, k) if not is_controller(r)]


for name, docs in renders.items():
    if not [d for d in kind(docs, "Deployment") if not is_controller(d)]:
        continue

    @check(f"{name}: Deployment runs `run`, hardened, with /livez /readyz and startup probes on the admin port")
    def _():
        dep = run_dep(docs)
        ps = pod_spec(dep)
        (c,) = ps["containers"]
        assert c["args"][0] == "run", c["args"]
        hardened(c, c["name"])
        psc = ps["securityContext"]
        assert psc.get("runAsNonRoot") is True and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        # probes-off switches two probes off on purpose (its own check is below).
        off = {"startupProbe", "livenessProbe"} if name == "probes-off" else set()
        on = [p for p in ("livenessProbe", "readinessProbe", "startupProbe") if p not in off]
        assert not off & set(c), f"{sorted(off & set(c))} rendered although switched off"
        if "livenessProbe" in on:
            assert http_path(c.get("livenessProbe")) == "/livez"
        assert http_path(c.get("readinessProbe")) == "/readyz"
        if "startupProbe" in on:
            assert c.get("startupProbe"), "no startupProbe"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for p in on:
            assert c[p]["httpGet"]["port"] == "admin", p
        env = env_of(c)
        assert env["LS_ADMIN_ADDR"] == f"0.0.0.0:{ports['admin']}", (env["LS_ADMIN_ADDR"], ports)
        assert env["LS_URL"].startswith("http"), env["LS_URL"]
        assert env["LS_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env["LS_POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}

    @check(f"{name}: the PAT never travels in an environment variable")
    def _():
        for d in docs:
            if d["kind"] in ("Deployment", "Job", "Pod"):
                for c in all_containers(pod_spec(d)):
                    for e in c.get("env", []):
                        assert e["name"] != "LS_PAT", f"{c['name']} sets LS_PAT"
                        assert "secretKeyRef" not in e.get("valueFrom", {}), f"{c['name']}: {e['name']} from a Secret"

    @check(f"{name}: ServiceAccount token mounted only by the pod (automount false on the ServiceAccount)")
    def _():
        dep = run_dep(docs)
        ps = pod_spec(dep)
        assert ps["automountServiceAccountToken"] is True
        for sa in kind(docs, "ServiceAccount"):
            assert sa["automountServiceAccountToken"] is False
        run_sa = [sa for sa in kind(docs, "ServiceAccount") if not is_controller(sa)]
        for sa in run_sa:
            assert ps["serviceAccountName"] == sa["metadata"]["name"]

    @check(f"{name}: every object has an explicit namespace")
    def _():
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                assert d["metadata"].get("namespace"), f"{d['kind']}/{d['metadata']['name']} has no namespace"

    if run_roles(docs):

        @check(f"{name}: Role is least privilege (secrets only by resourceNames, no create on secrets)")
        def _():
            (role,) = run_roles(docs)
            c = run_dep(docs)["spec"]["template"]["spec"]["containers"][0]
            env = env_of(c)
            rules = role["rules"]
            for r in rules:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in r[field], f"wildcard in {r}"
            secrets = [r for r in rules if "secrets" in r["resources"]]
            # Every secrets rule names its Secrets: an unnamed one would reach every Secret of the namespace, and
            # `create` (which RBAC cannot limit by name) would allow minting a service-account-token Secret.
            for r in secrets:
                assert r.get("resourceNames"), f"secrets rule without resourceNames: {r}"
                assert "create" not in r["verbs"], f"create on secrets: {r}"
            by_name = {}
            for r in secrets:
                by_name.setdefault(tuple(r["resourceNames"]), set()).update(r["verbs"])
            # PAT rotation (LS_ROTATE_PAT_*) writes the new PAT back: `patch` on the PAT Secret then, never without.
            rotation = bool(ROTATION_ENV & set(env))
            assert by_name == {
                (env["LS_PAT_SECRET"],): {"get", "list", "watch"} | ({"patch"} if rotation else set()),
                (env["LS_TARGET_SECRET"],): {"get", "patch"},
            }, by_name
            events = {tuple(r["apiGroups"]): set(r["verbs"]) for r in rules if "events" in r["resources"]}
            assert events == {("",): {"create", "patch"}, ("events.k8s.io",): {"create", "patch"}}, events
            # Leader election: get/update on the chart's own Lease only; no create (the chart creates the Lease).
            leases = [r for r in rules if "leases" in r["resources"]]
            if env.get("LS_LEADER_ELECT") == "true":
                assert leases == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                   "resourceNames": [env["LS_LEASE_NAME"]], "verbs": ["get", "update"]}], leases
                (lease,) = [x for x in kind(docs, "Lease") if not is_controller(x)]
                assert lease["metadata"]["name"] == env["LS_LEASE_NAME"] and "spec" not in lease, lease
            else:
                assert not leases and not [x for x in kind(docs, "Lease") if not is_controller(x)], leases
            assert len(rules) == 4 + len(leases) + rotation, rules
            (rb,) = run_roles(docs, "RoleBinding")
            assert rb["roleRef"]["name"] == role["metadata"]["name"]
            assert rb["subjects"][0]["name"] == pod_spec(run_dep(docs))["serviceAccountName"]

    @check(f"{name}: the target Secret is rendered empty, kept on uninstall, and is the one the Role may patch")
    def _():
        env = env_of(run_dep(docs)["spec"]["template"]["spec"]["containers"][0])
        secrets = [d for d in kind(docs, "Secret") if d["metadata"]["name"] == env["LS_TARGET_SECRET"]]
        if name == "target-not-created":
            assert not secrets, "targetSecret.create=false still renders the target"
            return
        (target,) = secrets
        # No keys: they belong to the refresher's field manager, and Helm must never own (or reset) them.
        assert not target.get("data") and not target.get("stringData"), target
        assert target["type"] == "Opaque"
        assert target["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        # ... and, with PAT rotation on, the PAT Secret it writes the new PAT into.
        pat = {env["LS_PAT_SECRET"]} if ROTATION_ENV & set(env) else set()
        for role in run_roles(docs):
            names = {n for r in role["rules"] if "secrets" in r["resources"] for n in r["resourceNames"]
                     if "patch" in r["verbs"]}
            assert names == {target["metadata"]["name"]} | pat, names

    @check(f"{name}: Service exposes the named admin port, also while not ready")
    def _():
        (svc,) = [s for s in kind(docs, "Service") if not is_controller(s)]
        (port,) = svc["spec"]["ports"]
        assert port["name"] == "admin" and port["targetPort"] == "admin"
        assert svc["spec"]["publishNotReadyAddresses"] is True
        dep = run_dep(docs)
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
        for sm in [m for m in kind(docs, "ServiceMonitor") if m["metadata"]["name"] == svc["metadata"]["name"]]:
            assert sm["spec"]["endpoints"][0]["port"] == "admin"
            assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
            assert all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())

    if kind(docs, "NetworkPolicy"):

        @check(f"{name}: NetworkPolicy allows egress to DNS, the API server and Label Studio only")
        def _():
            (np,) = [n for n in kind(docs, "NetworkPolicy") if not is_controller(n)]
            spec = np["spec"]
            assert spec["policyTypes"] == ["Ingress", "Egress"]
            dep = run_dep(docs)
            labels = dep["spec"]["template"]["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in spec["podSelector"]["matchLabels"].items())
            egress_ports = [sorted(p["port"] for p in rule["ports"]) for rule in spec["egress"]]
            assert egress_ports[0] == [53, 53], egress_ports
            assert egress_ports[1] == [443, 6443], egress_ports
            url = env_of(dep["spec"]["template"]["spec"]["containers"][0])["LS_URL"]
            m = re.match(r"^(https?)://[^/:]+(?::(\d+))?", url)
            want = int(m.group(2) or (443 if m.group(1) == "https" else 80))
            assert egress_ports[2] == [want], (egress_ports, url)
            assert len(spec["egress"]) == 3
            for rule in spec["egress"]:
                assert rule.get("ports"), f"egress rule without ports: {rule}"
            assert [p["port"] for r in spec["ingress"] for p in r["ports"]] == ["admin"]

# --- controller mode ------------------------------------------------------------------------------------------------
for name, docs in renders.items():
    ctl = [d for d in kind(docs, "Deployment") if is_controller(d)]
    if not ctl:
        continue

    @check(f"{name}: controller Deployment runs `controller`, hardened, probed, one at a time, as its own ServiceAccount")
    def _(ctl=ctl, docs=docs):
        (dep,) = ctl
        ps = pod_spec(dep)
        (c,) = ps["containers"]
        assert c["args"][0] == "controller", c["args"]
        hardened(c, c["name"])
        assert http_path(c.get("readinessProbe")) == "/readyz"
        assert http_path(c.get("livenessProbe")) == "/livez"
        env = env_of(c)
        if env.get("LS_LEADER_ELECT") == "true":
            # One leader reconciles; a surge pod stands by.
            assert env["LS_LEASE_NAME"] == dep["metadata"]["name"], env["LS_LEASE_NAME"]
            (lease,) = [x for x in kind(docs, "Lease") if is_controller(x)]
            assert lease["metadata"]["name"] == env["LS_LEASE_NAME"] and "spec" not in lease
            if dep["spec"]["replicas"] > 1:
                assert [p for p in kind(docs, "PodDisruptionBudget") if is_controller(p)], "no PDB"
        else:
            assert dep["spec"]["strategy"]["type"] == "Recreate"
        assert ps["automountServiceAccountToken"] is True
        (sa,) = [s for s in kind(docs, "ServiceAccount") if is_controller(s)]
        assert sa["automountServiceAccountToken"] is False
        assert ps["serviceAccountName"] == sa["metadata"]["name"]
        env = env_of(c)
        assert "LS_PAT_SECRET" not in env and "LS_URL" not in env, sorted(env)
        # Its pods never match the `run` Deployment's (immutable) selector.
        for other in kind(docs, "Deployment"):
            if other is not dep:
                sel = other["spec"]["selector"]["matchLabels"]
                labels = dep["spec"]["template"]["metadata"]["labels"]
                assert not all(labels.get(k) == v for k, v in sel.items()), "selectors overlap"

    @check(f"{name}: controller RBAC: cluster reads of connections and namespaces only; Secrets only where served")
    def _(ctl=ctl, docs=docs):
        env = env_of(pod_spec(ctl[0])["containers"][0])
        watched = [n for n in env.get("LS_WATCH_NAMESPACES", "").split(",") if n]
        croles = [r for r in kind(docs, "ClusterRole") if is_controller(r)]
        roles = [r for r in kind(docs, "Role") if is_controller(r)]
        for r in croles + roles:
            for rule in r["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], f"wildcard in {rule}"
                assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
                if "update" in rule["verbs"]:
                    # Only the controller's own Lease, by name.
                    assert rule["resources"] == ["leases"] and rule.get("resourceNames"), rule
        reads = [r for r in croles if not any("secrets" in x["resources"] for x in r["rules"])]
        assert len(reads) == 1
        assert {res for x in reads[0]["rules"] for res in x["resources"]} == {"labelstudioconnections", "namespaces"}
        assert all(set(x["verbs"]) == {"get", "list", "watch"} for x in reads[0]["rules"])
        with_secrets = [r for r in croles + roles if any("secrets" in x["resources"] for x in r["rules"])]
        if watched:
            assert not [r for r in with_secrets if r["kind"] == "ClusterRole"], "a ClusterRole on secrets although namespaces are listed"
            assert sorted(r["metadata"]["namespace"] for r in with_secrets) == sorted(watched)
        else:
            assert [r["kind"] for r in with_secrets] == ["ClusterRole"]
        for r in with_secrets:
            (sec_rule,) = [x for x in r["rules"] if "secrets" in x["resources"]]
            assert set(sec_rule["verbs"]) == {"get", "list", "watch", "create", "patch"}, sec_rule

    crds = kind(docs, "CustomResourceDefinition")
    if crds:

        @check(f"{name}: CRDs are the binary's, kept on uninstall")
        def _(crds=crds):
            names = sorted(c["metadata"]["name"] for c in crds)
            assert names == ["labelstudioconnections.ls-token-refresher.io", "labelstudiotokens.ls-token-refresher.io"]
            for c in crds:
                assert c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
                src = chart_dir / "files" / "crds" / f"{c['spec']['names']['plural']}.json"
                assert yaml.safe_load(src.read_text())["spec"] == c["spec"]

# --- alerts ---------------------------------------------------------------------------------------------------------
for name, docs in renders.items():
    for pr in kind(docs, "PrometheusRule"):

        @check(f"{name}: PrometheusRule has the required alerts on contract metrics only")
        def _(pr=pr):
            rules = [r for g in pr["spec"]["groups"] for r in g["rules"]]
            names = {r["alert"] for r in rules}
            missing = REQUIRED_ALERTS - names
            assert not missing, f"missing alerts {missing}"
            for r in rules:
                used = set(re.findall(r"\bls_token_refresher_\w+", r["expr"]))
                assert used, f"{r['alert']} uses no refresher metric"
                assert used <= CONTRACT_METRICS, f"{r['alert']} uses {used - CONTRACT_METRICS}"
                for reasons in re.findall(r'reason=~"([^"]+)"', r["expr"]):
                    assert set(reasons.split("|")) <= CONTRACT_REASONS, reasons
                results = set()
                for found in re.findall(r'pat_rotations_total\{result=~"([^"]+)"', r["expr"]):
                    results |= set(found.split("|"))
                assert results <= CONTRACT_ROTATION_RESULTS, results
                if r["alert"] == "LSTokenRefresherPATRotationFailing":
                    assert results == CONTRACT_ROTATION_RESULTS, f"{r['alert']} reads results {results}"
                assert r["labels"]["severity"] in ("critical", "warning", "info", "none")
                assert r["annotations"]["summary"] and r["annotations"]["description"]

# --- deploy/ -------------------------------------------------------------------------------------------------------
deploy = {p.relative_to(deploy_dir).as_posix(): load(p) for p in sorted(deploy_dir.rglob("*.y*ml"))
          if p.name != "alerts.rules.yml"}


def workload(docs):
    found = [d for d in docs if d["kind"] in ("Deployment", "Job")]
    assert len(found) == 1, [d["kind"] for d in docs]
    return found[0]


def refresher_containers(ps):
    return [c for c in all_containers(ps) if "ls-token-refresher" in c["image"]]


def file_mode_pod_checks(ps, fname):
    """What every file-mode pod in deploy/ needs: shared in-memory dir, group-readable, no API token."""
    assert ps.get("automountServiceAccountToken") is False, f"{fname}: the API token is mounted"
    fs_group = ps["securityContext"].get("fsGroup")
    assert fs_group, f"{fname}: no fsGroup"
    vols = {v["name"]: v for v in ps["volumes"]}
    refreshers = refresher_containers(ps)
    assert refreshers, f"{fname}: no refresher"
    for c in refreshers:
        env = env_of(c)
        hardened(c, f"{fname}:{c['name']}")
        assert env["LS_FILE_MODE"] == "0640", f"{fname}: LS_FILE_MODE={env.get('LS_FILE_MODE')}"
        assert "LS_PAT" not in env and "LS_PAT_FILE" in env
        token_dir = env["LS_TOKEN_DIR"]
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == token_dir]
        vol = vols[mount["name"]]
        assert vol.get("emptyDir", {}).get("medium") == "Memory", f"{fname}: token volume not in memory"
        pat_dir = env["LS_PAT_FILE"].rsplit("/", 1)[0]
        (pat_mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == pat_dir]
        assert pat_mount.get("readOnly") is True
        assert "secret" in vols[pat_mount["name"]]
    token_vol = mount["name"]
    consumers = [c for c in ps["containers"] if c not in refreshers]
    assert consumers, f"{fname}: no consumer"
    for c in consumers:
        (m,) = [m for m in c["volumeMounts"] if m["name"] == token_vol]
        assert m.get("readOnly") is True, f"{fname}:{c['name']} token mount is writable"
        assert m["mountPath"] == token_dir
        hardened(c, f"{fname}:{c['name']}")


@check("deploy/: no subPath mounts anywhere (they never see a new token)")
def _():
    for fname, docs in deploy.items():
        for d in docs:
            if d["kind"] in ("Deployment", "Job"):
                for c in all_containers(pod_spec(d)):
                    for m in c.get("volumeMounts", []):
                        assert "subPath" not in m and "subPathExpr" not in m, f"{fname}:{c['name']} {m}"


@check("deploy/: every object has an explicit namespace and no Helm bookkeeping labels or annotations")
def _():
    for fname, docs in deploy.items():
        for d in docs:
            md = d["metadata"]
            if d["kind"] in CLUSTER_SCOPED:
                assert not md.get("namespace"), f"{fname}: {d['kind']}/{md['name']} is cluster-scoped"
            elif fname == "controller-examples.yaml":
                # A tenant's objects, in the tenant's namespace.
                assert md.get("namespace") == "ml-team", f"{fname}: {d['kind']}/{md['name']}"
            else:
                assert md.get("namespace") == "label-studio", f"{fname}: {d['kind']}/{md['name']}"
            labels = md.get("labels", {})
            assert "helm.sh/chart" not in labels and labels.get("app.kubernetes.io/managed-by") != "Helm", fname
            assert not any(a.startswith("helm.sh/") for a in md.get("annotations") or {}), fname


@check("deploy/native-sidecar.yaml: native sidecar gates the app on /readyz, shares an in-memory dir")
def _():
    ps = pod_spec(workload(deploy["native-sidecar.yaml"]))
    (init,) = ps["initContainers"]
    assert init["restartPolicy"] == "Always"
    assert init["args"] == ["run"]
    assert http_path(init.get("startupProbe")) == "/readyz", init.get("startupProbe")
    assert http_path(init.get("livenessProbe")) == "/livez"
    assert http_path(init.get("readinessProbe")) == "/readyz"
    assert not refresher_containers({"containers": ps["containers"]}), "refresher also in containers"
    file_mode_pod_checks(ps, "native-sidecar.yaml")


@check("deploy/classic-sidecar.yaml: once init container, then a classic sidecar (no 1.28 fields)")
def _():
    ps = pod_spec(workload(deploy["classic-sidecar.yaml"]))
    (init,) = ps["initContainers"]
    assert init["args"] == ["once"] and "restartPolicy" not in init
    assert not any(k in init for k in ("startupProbe", "livenessProbe", "readinessProbe", "ports"))
    (side,) = [c for c in ps["containers"] if "ls-token-refresher" in c["image"]]
    assert side["args"] == ["run"] and "restartPolicy" not in side
    assert http_path(side.get("readinessProbe")) == "/readyz"
    assert http_path(side.get("livenessProbe")) == "/livez"
    file_mode_pod_checks(ps, "classic-sidecar.yaml")


@check("deploy/job-once.yaml: a Job whose init container runs `once` and exits")
def _():
    job = workload(deploy["job-once.yaml"])
    assert job["kind"] == "Job"
    ps = pod_spec(job)
    assert ps["restartPolicy"] == "Never"
    (init,) = ps["initContainers"]
    assert init["args"] == ["once"] and "restartPolicy" not in init
    assert not refresher_containers({"containers": ps["containers"]})
    assert job["spec"]["activeDeadlineSeconds"] < 300, "the task must fit in one 5-minute token"
    file_mode_pod_checks(ps, "job-once.yaml")


@check("deploy/proxy-sidecar.yaml: stock ML backend behind a proxy-mode classic sidecar, holding no credential")
def _():
    docs = deploy["proxy-sidecar.yaml"]
    ps = pod_spec(workload(docs))
    assert ps.get("automountServiceAccountToken") is False
    # Classic (runs on every Kubernetes version): no init containers, the sidecar listed first (started first), the
    # pod Ready only when the proxy holds a token.
    assert "initContainers" not in ps, "proxy-sidecar.yaml must not need native sidecars"
    side, app = ps["containers"]
    assert "ls-token-refresher" in side["image"] and "restartPolicy" not in side
    assert side["args"] == ["proxy"], side["args"]
    hardened(side, "proxy-sidecar.yaml:refresher")
    assert "startupProbe" not in side
    assert http_path(side.get("readinessProbe")) == "/readyz"
    assert http_path(side.get("livenessProbe")) == "/livez"
    env = env_of(side)
    host, port = env["LS_PROXY_ADDR"].rsplit(":", 1)
    assert host == "127.0.0.1", f"the proxy must listen on loopback only: {env['LS_PROXY_ADDR']}"
    assert "LS_TOKEN_DIR" not in env and "LS_FILE_MODE" not in env, "proxy mode writes no files"
    assert int(port) != int(env["LS_ADMIN_ADDR"].rsplit(":", 1)[1])
    vols = {v["name"]: v for v in ps["volumes"]}
    assert not any("emptyDir" in v and v["emptyDir"].get("medium") == "Memory" for v in vols.values()), \
        "no token volume in proxy mode"
    pat_dir = env["LS_PAT_FILE"].rsplit("/", 1)[0]
    (pat_mount,) = [m for m in side["volumeMounts"] if m["mountPath"] == pat_dir]
    assert "ls-token-refresher" not in app["image"]
    hardened(app, "proxy-sidecar.yaml:ml-backend")
    app_env = {e["name"]: e for e in app["env"]}
    assert app_env["LABEL_STUDIO_URL"]["value"] == f"http://{env['LS_PROXY_ADDR']}", app_env["LABEL_STUDIO_URL"]
    key = app_env["LABEL_STUDIO_API_KEY"]["value"]
    assert key == "placeholder-not-a-token", key
    # No credential reaches the app: no env from a Secret, no PAT or token volume.
    assert not any("valueFrom" in e for e in app["env"]), app["env"]
    assert not any(m["name"] == pat_mount["name"] for m in app.get("volumeMounts", [])), "the app mounts the PAT"


@check("deploy/: every example pod has a NetworkPolicy selecting it")
def _():
    for fname in ("native-sidecar.yaml", "classic-sidecar.yaml", "job-once.yaml", "proxy-sidecar.yaml",
                  "secret-mode.yaml"):
        docs = deploy[fname]
        w = workload(docs)
        labels = w["spec"]["template"]["metadata"]["labels"]
        nps = kind(docs, "NetworkPolicy")
        assert any(all(labels.get(k) == v for k, v in np["spec"]["podSelector"]["matchLabels"].items())
                   for np in nps), fname


@check("sidecar default image matches the chart's appVersion and values.yaml")
def _():
    tpl = (chart_dir / "templates" / "_sidecar.tpl").read_text()
    m = re.search(r'define "ls-token-refresher.sidecar.defaultImage" -\}\}\n(\S+)\n', tpl)
    assert m, "defaultImage not found"
    img = values["image"]
    want = f"{img['registry']}/{img['repository']}:{chart['appVersion']}"
    assert m.group(1) == want, (m.group(1), want)


@check("values.yaml: every value has a `## @param` comment (the generated reference documents every key)")
def _():
    # The same rule the readme generator enforces, checked here independently of it: each leaf (a scalar, a list, or
    # an empty map) is named by a @param, or lies under one marked [object] / [array].
    text = (chart_dir / "values.yaml").read_text()
    params = re.findall(r"^\s*## @param (\S+)(?: \[(object|array)\])?", text, re.M)
    exact = {p for p, _ in params}
    whole = {p for p, mod in params if mod}

    def leaves(node, path):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                yield from leaves(v, f"{path}.{k}" if path else k)
        else:
            yield path

    missing = [
        leaf for leaf in leaves(values, "")
        if leaf not in exact and not any(leaf.startswith(w + ".") for w in whole)
    ]
    assert not missing, f"values without a ## @param: {missing}"
    stray = [p for p in exact if p not in set(leaves(values, "")) and p not in whole]
    assert not stray, f"@param for keys values.yaml does not have: {stray}"


# --- chart conventions (issue 18), on the renders check.sh makes with the values a user would pass ------------------
def rendered(name):
    assert name in renders, f"no render named {name} (check.sh makes it)"
    return renders[name]


def pods_of(docs):
    """(kind/name, pod spec) of every workload and the helm test pod."""
    return [(f"{d['kind']}/{d['metadata']['name']}", pod_spec(d)) for d in docs
            if d["kind"] in ("Deployment", "Pod", "Job")]


def pull_secrets(ps):
    return [s["name"] for s in ps.get("imagePullSecrets", [])]


def pinned_ids(ps):
    found = [f"pod.{k}" for k in ("runAsUser", "runAsGroup", "fsGroup") if k in ps.get("securityContext", {})]
    for c in all_containers(ps):
        found += [f"{c['name']}.{k}" for k in ("runAsUser", "runAsGroup") if k in c.get("securityContext", {})]
    return found


@check("imagePullSecrets[0].name=regcred plus global.imagePullSecrets: both, global first, on every pod")
def _():
    pods = pods_of(rendered("set-pull-secrets"))
    assert len(pods) == 2, [n for n, _ in pods]  # the Deployment and the helm test pod
    for name, ps in pods:
        assert pull_secrets(ps) == ["shared-regcred", "regcred"], (name, ps.get("imagePullSecrets"))


@check("imagePullSecrets as plain strings (the earlier form, and Bitnami's global one) still render {name} items")
def _():
    for name, ps in pods_of(rendered("legacy-pull-secrets")):
        assert pull_secrets(ps) == ["shared-regcred", "regcred"], (name, ps.get("imagePullSecrets"))
    for name, ps in pods_of(rendered("minimal")):
        assert "imagePullSecrets" not in ps, f"{name}: pull secrets without any configured"


@check("global.imageRegistry replaces image.registry on every container")
def _():
    for name, ps in pods_of(rendered("global-registry")):
        for c in all_containers(ps):
            assert c["image"] == f"mirror.example.com/{values['image']['repository']}:{chart['appVersion']}", \
                (name, c["image"])


@check("OpenShift: auto on a cluster with security.openshift.io/v1, and force, drop every pinned UID/GID/fsGroup")
def _():
    for case in ("openshift-auto", "openshift-force"):
        pods = pods_of(rendered(case))
        assert pods
        for name, ps in pods:
            assert not pinned_ids(ps), (case, name, pinned_ids(ps))
            # Everything restricted-v2 allows stays.
            assert ps["securityContext"].get("runAsNonRoot") is True, (case, name)
            for c in all_containers(ps):
                hardened(c, f"{case} {name} {c['name']}")


@check("OpenShift: IDs stay pinned without OpenShift (minimal) and with adaptSecurityContext=disabled")
def _():
    for case in ("minimal", "openshift-disabled"):
        for name, ps in pods_of(rendered(case)):
            assert ps["securityContext"]["runAsUser"] == 65532 and ps["securityContext"]["fsGroup"] == 65532, \
                (case, name)
            for c in all_containers(ps):
                assert c["securityContext"]["runAsUser"] == 65532, (case, name, c["name"])


@check("namespaceOverride: every namespaced object, the RoleBinding subject and the ServiceMonitor selector use it")
def _():
    docs = rendered("namespace-override")
    kinds = {d["kind"] for d in docs}
    for k in ("Deployment", "ServiceAccount", "Role", "RoleBinding", "Service", "Secret", "NetworkPolicy",
              "ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "Pod"):
        assert k in kinds, f"no {k} rendered"
    for d in docs:
        assert d["metadata"]["namespace"] == "tokens", f"{d['kind']}/{d['metadata']['name']}"
    rb = one(docs, "RoleBinding")
    assert [s["namespace"] for s in rb["subjects"]] == ["tokens"], rb["subjects"]
    assert one(docs, "ServiceMonitor")["spec"]["namespaceSelector"]["matchNames"] == ["tokens"]


@check("PodMonitor for sidecars: renders without the Deployment, scrapes the ls-admin port of any pod")
def _():
    docs = rendered("podmonitor-sidecars-only")
    assert [d["kind"] for d in docs] == ["PodMonitor"], [d["kind"] for d in docs]
    pm = docs[0]
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert (ep["port"], ep["path"], ep["honorLabels"]) == ("ls-admin", "/metrics", False), ep
    assert pm["spec"]["selector"] == {}, pm["spec"]
    # The port the sidecar templates give the refresher container.
    sidecar = load(deploy_dir / "native-sidecar.yaml")
    ports = [p["name"] for d in kind(sidecar, "Deployment") for c in pod_spec(d)["initContainers"]
             for p in c.get("ports", [])]
    assert ep["port"] in ports, ports


@check("full: ServiceMonitor and PodMonitor carry honorLabels, labels, annotations and selectors")
def _():
    docs = rendered("full")
    sm, pm = one(docs, "ServiceMonitor"), one(docs, "PodMonitor")
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    assert sm["metadata"]["annotations"]["example.com/scraped-by"] == "platform-prometheus"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    ep = pm["spec"]["podMetricsEndpoints"][0]
    assert (ep["honorLabels"], ep["interval"]) == (True, "20s"), ep
    assert pm["spec"]["selector"] == {"matchLabels": {"example.com/ls-token-sidecar": "true"}}
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml-backends", "label-studio"]}
    assert pm["metadata"]["annotations"]["example.com/scraped-by"] == "platform-prometheus"


@check("probes: each can be switched off, and its timings are the values'")
def _():
    (c,) = pod_spec(one(rendered("probes-off"), "Deployment"))["containers"]
    assert "startupProbe" not in c and "livenessProbe" not in c, sorted(c)
    r = c["readinessProbe"]
    assert (r["timeoutSeconds"], r["initialDelaySeconds"], r["periodSeconds"]) == (7, 3, 5), r
    (c,) = pod_spec(one(rendered("full"), "Deployment"))["containers"]
    lp = c["livenessProbe"]
    assert (lp["initialDelaySeconds"], lp["periodSeconds"], lp["failureThreshold"], lp["timeoutSeconds"]) == \
        (5, 20, 4, 3), lp


@check("deployment.strategy: RollingUpdate surge-first by default, Recreate without rollingUpdate")
def _():
    st = one(rendered("minimal"), "Deployment")["spec"]["strategy"]
    assert st == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}, st
    for case in ("strategy-recreate", "full"):
        st = one(rendered(case), "Deployment")["spec"]["strategy"]
        assert st == {"type": "Recreate"}, (case, st)


@check("serviceAccount.labels and automountServiceAccountToken reach the ServiceAccount")
def _():
    sa = one(rendered("full"), "ServiceAccount")
    assert sa["metadata"]["labels"]["example.com/identity"] == "token-refresh"
    assert sa["automountServiceAccountToken"] is False
    assert one(rendered("minimal"), "ServiceAccount")["automountServiceAccountToken"] is False


@check("extraObjects: maps and strings both rendered through tpl")
def _():
    cms = {d["metadata"]["name"]: d for d in kind(rendered("full"), "ConfigMap")}
    assert cms["ls-refresher-extra"]["data"] == {"release": "ls-token-refresher"}, cms.get("ls-refresher-extra")
    assert cms["ls-refresher-extra"]["metadata"]["namespace"] == "label-studio"
    assert cms["ls-refresher-extra-string"]["data"] == {"from": "a string"}


@check("envFrom reaches the refresher and the helm test pod; nodeSelector defaults to linux")
def _():
    docs = rendered("full")
    for name, ps in pods_of(docs):
        (c,) = ps["containers"]
        assert c["envFrom"] == [{"configMapRef": {"name": "egress-proxy"}}], (name, c.get("envFrom"))
    for name, ps in pods_of(rendered("minimal")):
        assert ps["nodeSelector"] == {"kubernetes.io/os": "linux"}, (name, ps.get("nodeSelector"))


@check("Grafana dashboard ConfigMap: off by default, sidecar label, the JSON of deploy/monitoring, as configured")
def _():
    assert not [d for d in rendered("minimal") if d["kind"] == "ConfigMap"], "a ConfigMap by default"
    (cm,) = [d for d in kind(rendered("full"), "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["team"] == "ml-platform"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "Platform"
    (body,) = cm["data"].values()
    import json
    shipped = json.loads((deploy_dir / "monitoring" / "grafana-dashboard.json").read_text())
    assert json.loads(body) == shipped, "the ConfigMap's dashboard differs from deploy/monitoring"
    panels = [p for p in shipped["panels"] if p["type"] != "row"]
    assert len(panels) >= 10, len(panels)
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all("ls_token_refresher_" in t["expr"] for t in p["targets"]), p["title"]


@check("helm test pod: a `test` hook running `check` with the Deployment's configuration and ServiceAccount")
def _():
    for case in ("minimal", "full", "https-ca-secret"):
        docs = rendered(case)
        dep, pod = one(docs, "Deployment"), one(docs, "Pod")
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test", case
        dps, tps = pod_spec(dep), pod["spec"]
        (run,), (chk,) = dps["containers"], tps["containers"]
        assert chk["args"] == ["check"] and tps["restartPolicy"] == "Never", case
        assert chk["image"] == run["image"], case
        assert tps["serviceAccountName"] == dps["serviceAccountName"], case
        assert tps["automountServiceAccountToken"] is True, case
        for k in ("hostNetwork", "nodeSelector", "tolerations", "imagePullSecrets", "volumes"):
            assert tps.get(k) == dps.get(k), (case, k)
        # The user's affinity reaches both; the replicas' default anti-affinity (spread over nodes) is theirs only.
        user = yaml.safe_load((Path(__file__).parent / "values" / f"{case}.yaml").read_text()) or {}
        assert tps.get("affinity") == (user.get("affinity") or None), case
        if user.get("affinity"):
            assert dps["affinity"] == user["affinity"], case
        assert chk.get("volumeMounts") == run.get("volumeMounts"), case
        # Every setting check reads is the refresher's (admin, logging and pod identity are run's own).
        run_env, chk_env = env_of(run), env_of(chk)
        own = {"LS_ADMIN_ADDR", "LS_LOG_FORMAT", "LS_LOG_LEVEL", "LS_POD_NAME", "LS_POD_NAMESPACE", "LS_LEADER_ELECT",
               "LS_LEASE_NAME", "LS_LEASE_DURATION", "LS_LEASE_RENEW_DEADLINE", "LS_LEASE_RETRY_PERIOD"}
        shared = {k: v for k, v in run_env.items() if k not in own}
        assert {k: chk_env.get(k) for k in shared} == shared, case
        assert chk_env["LS_LOG_FORMAT"] == "plain", case
    assert not kind(rendered("no-helm-test"), "Pod"), "tests.enabled=false still renders the test pod"


@check("pat.rotation: env on the run container and `patch` on the PAT Secret only when set; never on the test pod")
def _():
    docs = rendered("rotation")
    user = yaml.safe_load((Path(__file__).parent / "values" / "rotation.yaml").read_text())
    dep = run_dep(docs)
    (c,) = pod_spec(dep)["containers"]
    env = env_of(c)
    assert env["LS_PAT_SECRET"] == user["pat"]["existingSecret"], env["LS_PAT_SECRET"]
    assert env["LS_ROTATE_PAT_EVERY"] == user["pat"]["rotation"]["every"], env
    assert env["LS_ROTATE_PAT_BEFORE_EXPIRY"] == user["pat"]["rotation"]["beforeExpiry"], env
    # The helm test pod runs `check`, which rotates nothing.
    (pod,) = kind(docs, "Pod")
    assert not ROTATION_ENV & set(env_of(pod_spec(pod)["containers"][0])), "rotation env on the helm test pod"
    (role,) = run_roles(docs)
    writes = [r for r in role["rules"] if "secrets" in r["resources"] and env["LS_PAT_SECRET"] in r["resourceNames"]
              and "patch" in r["verbs"]]
    assert writes == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [env["LS_PAT_SECRET"]],
                       "verbs": ["patch"]}], writes
    # The default (and every other value set without pat.rotation): read-only on the PAT Secret, no rotation env.
    for case in ("minimal", "full", "target-not-created"):
        docs = rendered(case)
        env = env_of(pod_spec(run_dep(docs))["containers"][0])
        assert not ROTATION_ENV & set(env), (case, env)
        for role in run_roles(docs):
            for r in role["rules"]:
                if "secrets" in r["resources"] and env["LS_PAT_SECRET"] in r["resourceNames"]:
                    assert "patch" not in r["verbs"], (case, r)
    # Either duration alone turns rotation on, and only its own variable is set.
    env = env_of(pod_spec(run_dep(rendered("rotation-before-expiry-only")))["containers"][0])
    assert {k: env.get(k) for k in ROTATION_ENV} == {"LS_ROTATE_PAT_EVERY": None, "LS_ROTATE_PAT_BEFORE_EXPIRY": "30d"}
    assert "patch" in {v for r in run_roles(rendered("rotation-before-expiry-only"))[0]["rules"]
                       if env["LS_PAT_SECRET"] in r.get("resourceNames", []) for v in r["verbs"]}


@check("Chart.yaml: icon, home is this project, sources, maintainers, Artifact Hub annotations")
def _():
    assert chart.get("icon", "").startswith("https://"), chart.get("icon")
    assert "labelstud.io" not in chart["home"] and "ls-token-refresher" in chart["home"], chart["home"]
    assert chart.get("sources") and chart.get("maintainers"), chart
    ann = chart["annotations"]
    for k in ("artifacthub.io/license", "artifacthub.io/category", "artifacthub.io/images", "artifacthub.io/links"):
        assert k in ann, k
    images = yaml.safe_load(ann["artifacthub.io/images"])
    want = f"{values['image']['registry']}/{values['image']['repository']}:{chart['appVersion']}"
    assert [i["image"] for i in images] == [want], (images, want)
    assert (chart_dir / "icon.svg").is_file()


@check("HA (issue 16): 2 replicas, leader election on the chart's Lease, PDB, spread over nodes, 30 s node tolerations")
def _():
    docs = rendered("minimal")
    dep = one(docs, "Deployment")
    ps = pod_spec(dep)
    env = env_of(ps["containers"][0])
    assert dep["spec"]["replicas"] == 2, dep["spec"]["replicas"]
    assert env["LS_LEADER_ELECT"] == "true" and env["LS_LEASE_NAME"] == one(docs, "Lease")["metadata"]["name"], env
    assert (env["LS_LEASE_DURATION"], env["LS_LEASE_RENEW_DEADLINE"], env["LS_LEASE_RETRY_PERIOD"]) == ("15s", "10s", "2s")
    pod_name = [e for e in ps["containers"][0]["env"] if e["name"] == "LS_POD_NAME"][0]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", "the holder identity is the pod name"
    selector = dep["spec"]["selector"]["matchLabels"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}, pdb["spec"]
    (term,) = ps["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"] == {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector}}
    (spread,) = ps["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway" and spread["topologyKey"] == "kubernetes.io/hostname"
    tol = {t["key"]: t for t in ps["tolerations"]}
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        assert tol[key] == {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}, tol
    # The user's own affinity and spread replace the defaults (values/full.yaml sets both).
    full = pod_spec(one(rendered("full"), "Deployment"))
    assert "podAntiAffinity" not in full["affinity"] and len(full["topologySpreadConstraints"]) == 1, full


if work_dir:
    @check("parent chart with condition: ls-token-refresher.enabled: true renders the chart, false nothing of it")
    def _():
        on = load(work_dir / "parent-enabled-true.yaml")
        off = load(work_dir / "parent-enabled-false.yaml")
        assert one(on, "Deployment")["metadata"]["name"] == "umbrella-ls-token-refresher"
        assert [d["metadata"]["name"] for d in off] == ["umbrella"], [d["metadata"]["name"] for d in off]

    @check("sidecar templates with `context`: image, pull policy and OpenShift switch from the parent's values")
    def _():
        def sidecars(name):
            docs = load(work_dir / f"examples-{name}.yaml")
            found = [c for d in docs if d["kind"] in ("Deployment", "Job") for c in all_containers(pod_spec(d))
                     if c["name"].startswith("ls-token-refresher")]
            assert len(found) >= 5, (name, len(found))
            return found
        digest = "sha256:" + "0123456789abcdef" * 4
        for c in sidecars("mirror"):
            assert c["image"] == f"mirror.example.com/{values['image']['repository']}@{digest}", c["image"]
            assert c["imagePullPolicy"] == "Always"
        for c in sidecars("global-registry"):
            assert c["image"].startswith("registry.internal/"), c["image"]
        for c in sidecars("openshift"):
            sc = c["securityContext"]
            assert "runAsUser" not in sc and "runAsGroup" not in sc and sc["runAsNonRoot"] is True, sc

for name, why in results:
    print(f"ok   {name}" if why is None else f"FAIL {name}: {why}")
sys.exit(1 if any(why for _, why in results) else 0)
