# syntax=docker/dockerfile:1
# Sluicegate's router on CPU: the gateway alone, no in-process engines (the
# GPU pool is Dockerfile.gpu; upstreams are reached over HTTP).
#   docker build -t sluicegate .
#   docker run -p 8300:8300 -v $PWD/sluicegate.yaml:/etc/sluicegate/sluicegate.yaml:ro sluicegate
#
# Installed the way scripts/install.sh installs (pinned, sha256-checked, no
# dependency resolution: --require-hashes --no-deps), but only the part of
# requirements/lock.txt that the project's own dependencies and the `otel`
# extra need: the lock also holds vLLM (with a CPU torch wheel PyPI does not
# carry) and llama.cpp (built from source), which the router does not use.
# slim_lock.py picks those entries through the lock's `# via` annotations.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY <<'EOF' /tmp/slim_lock.py
"""slim_lock.py LOCK ROOT... > OUT: the entries of LOCK (uv's hashed
requirements.txt) that the ROOTs need, found through its `# via` annotations.
A ROOT is a package name, or FILE.toml[EXTRA,...]: that project's dependencies
and extras. Entries are copied whole, hashes and all."""
import re
import sys
import tomllib


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def roots(arg):
    path, _, extras = arg.partition("[")
    if not path.endswith(".toml"):
        return {norm(arg)}
    project = tomllib.load(open(path, "rb"))["project"]
    reqs = list(project["dependencies"])
    for extra in filter(None, extras.rstrip("]").split(",")):
        reqs += project["optional-dependencies"][extra]
    return {norm(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in reqs}


lock, *args = sys.argv[1:]
wanted = set().union(*map(roots, args))
entries = {}
for entry in re.split(r"\n(?=\S)", open(lock).read()):
    head = entry.split("\n", 1)[0]
    if "==" in head and not head.startswith("#"):
        via = re.findall(r"^\s*#\s+(?:via\s+)?([A-Za-z0-9][A-Za-z0-9._-]*)\s*$", entry, re.M)
        entries[norm(head.split("==")[0])] = (entry.rstrip(), {norm(v) for v in via if v != "via"})
if wanted - set(entries):
    sys.exit(f"not in {lock}: {sorted(wanted - set(entries))}")
while more := {n for n, (_, via) in entries.items() if n not in wanted and via & wanted}:
    wanted |= more
print("\n".join(entries[n][0] for n in sorted(wanted)))
EOF
WORKDIR /src
COPY requirements/ ./requirements/
COPY pyproject.toml README.md ./
RUN python -m venv /opt/sluicegate \
 && python /tmp/slim_lock.py requirements/build.txt setuptools wheel > /tmp/build.txt \
 && python /tmp/slim_lock.py requirements/lock.txt 'pyproject.toml[otel]' > /tmp/lock.txt \
 && /opt/sluicegate/bin/pip install --no-deps --require-hashes -r /tmp/build.txt \
 && /opt/sluicegate/bin/pip install --no-deps --require-hashes --only-binary :all: -r /tmp/lock.txt
COPY core ./core
COPY router ./router
COPY serving ./serving
COPY policies ./policies
COPY budgets ./budgets
COPY bench ./bench
RUN /opt/sluicegate/bin/pip install --no-deps --no-build-isolation . \
 && /opt/sluicegate/bin/sluicegate --help > /dev/null

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PATH=/opt/sluicegate/bin:$PATH
COPY --from=build /opt/sluicegate /opt/sluicegate
RUN groupadd --gid 10001 sluicegate \
 && useradd --create-home --uid 10001 --gid 10001 sluicegate \
 && mkdir -p /etc/sluicegate /var/lib/sluicegate \
 && chown sluicegate:sluicegate /var/lib/sluicegate
USER 10001:10001
WORKDIR /var/lib/sluicegate
EXPOSE 8300
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8300/healthz', timeout=2)"]
# exec form: SIGTERM reaches the server, which drains in-flight requests first.
ENTRYPOINT ["sluicegate"]
CMD ["serve", "--config", "/etc/sluicegate/sluicegate.yaml"]
