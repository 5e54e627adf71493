#!/usr/bin/env bash
# The deploy checks: the Dockerfiles pass hadolint; Prometheus' config, alert rules and
# the rules' unit tests pass promtool; the Kubernetes manifests validate against the
# schemas of Kubernetes 1.37 (strict: no unknown fields); the compose file and the
# Grafana dashboard parse and name files that exist; and the server image builds and
# works: its filesystem is mounted and its cifar-serve started in it with chroot, with
# the image's own environment and user, then asked to classify an image through curl;
# the trainer image's binary runs from its filesystem too.
# (`podman run` cannot start containers on this machine kind; see ../shared/MEASURED.md.)
# The live Prometheus alert test is in server/tests/drift.rs (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(scripts/deploy-tools.sh)

echo "== hadolint"
"$bin/hadolint" deploy/docker/*.Dockerfile
echo "== promtool"
if command -v promtool >/dev/null 2>&1; then
  promtool check config deploy/prometheus/prometheus.yml
  promtool test rules deploy/prometheus/rules.test.yml
else
  echo "skipped: promtool is not installed (Debian's prometheus package; scripts/deploy-tools.sh installs it as root)" >&2
fi
echo "== kubernetes-validate (Kubernetes 1.37, strict)"
"$bin/kubernetes-validate" --strict -k 1.37.0 \
  deploy/k8s/{configmap,pvc,deployment,service,hpa,pdb}.yaml
"$bin/python" - <<'PY'
import json, pathlib, yaml
deploy = pathlib.Path("deploy")
kust = yaml.safe_load((deploy / "k8s/kustomization.yaml").read_text())
for r in kust["resources"]:
    assert (deploy / "k8s" / r).is_file(), f"kustomization.yaml names a missing file {r}"
compose = yaml.safe_load((deploy / "compose.yaml").read_text())
assert set(compose["services"]) == {"cifar-serve", "prometheus", "grafana"}, compose["services"].keys()
for name, svc in compose["services"].items():
    assert "image" in svc, f"compose service {name} has no image"
    for v in svc.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("."):
            p = deploy / src
            assert p.exists() or src == "./models", f"compose service {name} mounts missing {src}"
dash = json.loads((deploy / "grafana/dashboards/cifar-serve.json").read_text())
titles = [p["title"] for p in dash["panels"]]
for want in ["Request rate", "Errors by reason", "Latency p50 / p99 (inference endpoints)",
             "Queue time, compute time and queue fill", "Batch size", "Drift score", "Drift alert", "Model"]:
    assert want in titles, f"dashboard lacks the panel {want!r}: {titles}"
for p in dash["panels"]:
    assert p["targets"] and all(t["expr"] for t in p["targets"]), f"panel {p['title']} has no query"
print(f"compose.yaml, kustomization.yaml and the dashboard ({len(titles)} panels) are consistent")
PY

echo "== images"
if [ "$(id -u)" != 0 ] || ! command -v podman >/dev/null 2>&1; then
  echo "skipped: building and mounting images needs root and podman" >&2
  exit 0
fi
scripts/build-images.sh --model fixtures/models/tiny-int8.cifar --tag ci
image=localhost/cifar-serve:ci
server="" ctr="" tctr=""
cleanup() {
  [ -z "$server" ] || kill "$server" 2>/dev/null || true
  [ -z "$server" ] || wait "$server" 2>/dev/null || true
  for c in $ctr $tctr; do
    podman umount "$c" >/dev/null 2>&1 || true
    podman rm -f "$c" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
ctr=$(podman create "$image")
mnt=$(podman mount "$ctr")
mapfile -t envs < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" | sed '/^$/d')
user=$(podman image inspect --format '{{.Config.User}}' "$image")
entry=$(podman image inspect --format '{{index .Config.Entrypoint 0}}' "$image")
health=$(podman image inspect --format '{{json .Config.Healthcheck.Test}}' "$image")
echo "image: user $user, entrypoint $entry, health check $health"
[ "$user" = "10001:10001" ] || { echo "the server image must not run as root (User=$user)" >&2; exit 1; }
# The image's environment, with the listen addresses moved to free loopback ports.
env -i "${envs[@]}" CIFAR_SERVE_ADDR=127.0.0.1:0 CIFAR_SERVE_GRPC_ADDR=127.0.0.1:0 \
  CIFAR_SERVE_READY_FILE=/tmp/ready chroot --userspec="$user" "$mnt" "$entry" 2>"$mnt/tmp/server.log" &
server=$!
for _ in $(seq 100); do
  [ -s "$mnt/tmp/ready" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$mnt/tmp/server.log" >&2; exit 1; }
  sleep 0.1
done
[ -s "$mnt/tmp/ready" ] || { echo "the image's server did not start within 10 s:" >&2; cat "$mnt/tmp/server.log" >&2; exit 1; }
addr=$(head -1 "$mnt/tmp/ready")
# The image's own curl, as its HEALTHCHECK runs it.
chroot --userspec="$user" "$mnt" curl -fsS -o /dev/null "http://$addr/v2/health/ready"
answer=$(curl -fsS -F "image=@fixtures/images/00029-airplane.png" "http://$addr/v1/classify")
expect=$(head -1 fixtures/golden/tiny-int8.jsonl | python3 -c 'import json,sys; print(json.load(sys.stdin)["top"][0]["label"])')
got=$(echo "$answer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["top"][0]["label"])')
echo "classified through the image's server: $got (expected $expect)"
[ "$got" = "$expect" ] || { echo "$answer" >&2; exit 1; }
kill -TERM "$server" && wait "$server" || { echo "the server did not stop cleanly on SIGTERM" >&2; cat "$mnt/tmp/server.log" >&2; exit 1; }
server=""
echo "the server image works: built, started from its filesystem as user $user, classified, drained on SIGTERM"
# The trainer image: its binary runs from its own filesystem, with its configs.
tctr=$(podman create localhost/cifar-trainer:ci)
tmnt=$(podman mount "$tctr")
chroot --userspec=10001:10001 "$tmnt" /usr/local/bin/trainer --version
test -f "$tmnt/work/configs/cpu.toml"
podman umount "$tctr" >/dev/null && podman rm "$tctr" >/dev/null && tctr=""
