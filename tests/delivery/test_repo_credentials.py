"""A password in an app's repo URL never shows: not in a log, a metadata entry, an error or the
image's `org.opencontainers.image.source` label (the topology refuses one outright:
test_topology_model.py). Real parts: git (a dumb-HTTP server with basic auth, git://), the job's
script, podman, Docker Distribution's registry on 127.0.0.1, Dagster; Jenkins is the fake."""

from __future__ import annotations

import base64
import functools
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import dagster as dg
import pytest
from fakes.jenkins import Console, FakeJenkins
from fixtures_delivery import AppRepo, delivery_defs, git, push_sensor_build, write_app_topology

from infra_assets.topology import assets as topology_assets
from infra_assets.topology.model import read_topology
from lab.processes import free_port
from resources.git import GitError, GitResource
from resources.git_url import redact_repo, repo_password, repo_secrets
from resources.jenkins import JenkinsResource
from resources.registry import RegistryResource
from resources.topology import TopologyResource
from sensors.git_push import Cursor, poll

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "jenkins" / "build-app-image.sh"
USER, SECRET = "bob", "s3cr3t-token"
SOURCE_LABEL = "org.opencontainers.image.source"
# A tiny app: no base image to make, nothing to run while building.
TINY_APP = {"Dockerfile": "FROM scratch\nCOPY app.txt /app.txt\n", "app.txt": "hello\n"}


# --- the function -----------------------------------------------------------------------------

# repo as written -> (without its password, with it masked, the password as written)
FORMS = {
    "https://bob:s3cr3t-token@git.example.org/a.git": (
        "https://bob@git.example.org/a.git",
        "https://bob:***@git.example.org/a.git",
        "s3cr3t-token",
    ),
    "https://bob:s3cr3t@git.example.org:8443/coop/a.git": (
        "https://bob@git.example.org:8443/coop/a.git",
        "https://bob:***@git.example.org:8443/coop/a.git",
        "s3cr3t",
    ),
    "https://bob:s3cr%40t%3Atok%2Fen@git.example.org/a.git": (
        "https://bob@git.example.org/a.git",
        "https://bob:***@git.example.org/a.git",
        "s3cr%40t%3Atok%2Fen",
    ),
    "https://:ghp_t0ken@github.com/coop/a.git": (
        "https://github.com/coop/a.git",
        "https://:***@github.com/coop/a.git",
        "ghp_t0ken",
    ),
    "ssh://git:hunter22@[::1]:2222/a.git": (
        "ssh://git@[::1]:2222/a.git",
        "ssh://git:***@[::1]:2222/a.git",
        "hunter22",
    ),
    # a raw @ in the password: all of it goes (git would send only `p`, and use `ss@host`)
    "https://bob:p@ss@git.example.org/a.git": (
        "https://bob@git.example.org/a.git",
        "https://bob:***@git.example.org/a.git",
        "p@ss",
    ),
    "bob:hunter22@git.example.org:coop/a.git": (
        "bob@git.example.org:coop/a.git",
        "bob:***@git.example.org:coop/a.git",
        "hunter22",
    ),
}
# An access token as the user name: the whole user is the secret; none is left.
TOKEN_USERS = {
    "https://ghp_t0kenT0ken@github.com/coop/a.git": "ghp_t0kenT0ken",
    "https://github_pat_11AB_cd@github.com/coop/a.git": "github_pat_11AB_cd",
    "https://glpat-Xy12zz@gitlab.example.org:8443/a.git": "glpat-Xy12zz",
    "https://0123456789abcdef0123456789abcdef01234567@github.com/a.git": (
        "0123456789abcdef0123456789abcdef01234567"
    ),
}


@pytest.mark.parametrize("repo", list(TOKEN_USERS))
def test_a_token_written_as_the_user_name_is_the_secret(repo, tmp_path):
    token = TOKEN_USERS[repo]
    host_and_path = repo.split("@", 1)[1]
    assert repo_password(repo) == token and repo_secrets(repo) == [token]
    assert redact_repo(repo) == f"https://{host_and_path}"
    assert redact_repo(repo, mask="***") == f"https://***@{host_and_path}"
    # git takes it as the user name (what git hands its credential helper); the redacted URL
    # leaves git nothing of it.
    assert _git_credential(repo, tmp_path)["username"] == token
    assert "username" not in _git_credential(redact_repo(repo), tmp_path)


# No password: each is returned as it is.
PLAIN = [
    "https://git.example.org/a.git",
    "https://git.example.org:8443/a.git",
    "https://bob@git.example.org:8443/a.git",
    "https://ana-maria-kowalczyk-smith@git.example.org/a.git",  # a long name is no token
    "ssh://git@github.com/0123456789abcdef0123456789abcdef01234567.git",
    "https://git.example.org/a.git?x=a:b@c",
    "https://git.example.org/a.git#a:b@c",
    "ssh://git@git.example.org:2222/a.git",
    "git@git.example.org:coop/a.git",
    "[::1]:hello.git",
    "file:///srv/git/a.git",
    "/srv/git/a:b@c/a.git",
    "./a:b@c/a.git",
    "git/hello.git",
]


@pytest.mark.parametrize("repo", list(FORMS))
def test_redact_repo_removes_the_password_and_keeps_the_rest(repo):
    without, masked, password = FORMS[repo]
    assert redact_repo(repo) == without
    assert redact_repo(repo, mask="***") == masked
    assert repo_password(repo) == password
    assert repo_secrets(repo) == sorted({password, unquote(password)}, key=len, reverse=True)
    assert redact_repo(without) == without  # nothing left to remove


@pytest.mark.parametrize("repo", PLAIN)
def test_redact_repo_leaves_a_url_without_a_password_and_a_path_alone(repo):
    assert redact_repo(repo) == repo == redact_repo(repo, mask="***")
    assert repo_password(repo) == "" and repo_secrets(repo) == []


def _git_credential(url: str, home: Path) -> dict[str, str]:
    """What git itself reads from `url` (`git credential fill`, no prompt): what it prints when
    the URL gives it everything, else what it hands its credential helper (one that writes it
    down and answers nothing)."""
    asked = home / "asked"
    asked.unlink(missing_ok=True)
    out = subprocess.run(
        ["git", "-c", f"credential.helper=!cat > {asked}; :", "credential", "fill"],
        input=f"url={url}\n\n",
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(home),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    text = out.stdout if out.returncode == 0 else asked.read_text() if asked.exists() else ""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.mark.parametrize("repo", [r for r in FORMS if "://" in r and "p@ss" not in r])
def test_the_password_removed_is_the_one_git_reads(repo, tmp_path):
    # git decodes a URL-quoted password; the redacted URL leaves git none to send (it would
    # have to ask: no terminal here, so it reads nothing).
    assert _git_credential(repo, tmp_path)["password"] == unquote(repo_password(repo))
    assert "password" not in _git_credential(redact_repo(repo), tmp_path)


# --- git, for real ----------------------------------------------------------------------------


@dataclass
class GitOverHttp:
    """Bare repos under `root`, served over git's dumb HTTP protocol, behind basic auth."""

    root: Path
    url: str  # http://127.0.0.1:port (no user)
    seen: list[tuple[str, int, str]] = field(default_factory=list)  # (path, status, user)

    def repo_url(self, name: str, userinfo: str = "") -> str:
        host = self.url.removeprefix("http://")
        return f"http://{userinfo + '@' if userinfo else ''}{host}/git/{name}.git"

    def publish(self, repo: AppRepo) -> None:
        """What a dumb-HTTP server serves is the files: refresh info/refs after a push."""
        git("update-server-info", cwd=repo.bare)


@pytest.fixture
def git_over_http(tmp_path: Path) -> Iterator[GitOverHttp]:
    good = "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            auth = self.headers.get("Authorization")
            if auth != good:
                server.seen.append((self.path, 401, "" if auth is None else "wrong"))
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            server.seen.append((self.path, 200, USER))
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path))
    )
    server = GitOverHttp(tmp_path, f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def test_git_reads_a_repo_whose_url_holds_a_password_and_never_says_it(
    tmp_path, app_repos, git_over_http
):
    repo = app_repos("hello")
    sha = repo.commit(message="one")
    git_over_http.publish(repo)
    url = git_over_http.repo_url("hello", f"{USER}:{SECRET}")
    git = GitResource(timeout_s=30)

    assert git.head(repo=url, branch="main") == sha
    # The server refused git without the password, and let it in with it: it was used.
    assert ("/git/hello.git/info/refs?service=git-upload-pack", 401, "") in git_over_http.seen
    assert ("/git/hello.git/info/refs?service=git-upload-pack", 200, USER) in git_over_http.seen

    with pytest.raises(GitError) as err:
        git.head(repo=url, branch="release")
    assert str(err.value) == f"no branch 'release' in {git_over_http.repo_url('hello', USER)}"

    lines: list[str] = []
    out = git.checkout(repo=url, sha=sha, dest=tmp_path / "build", branch="main", log=lines.append)
    assert (out.path / "CHANGES").read_text() == "one\n"
    with pytest.raises(GitError) as bad:
        git.checkout(repo=url, sha="0" * 40, dest=tmp_path / "b2", log=lines.append)
    assert f"of {git_over_http.repo_url('hello', USER)}:" in str(bad.value)
    assert SECRET not in str(bad.value) and not [line for line in lines if SECRET in line]


@pytest.mark.parametrize("password", [SECRET, "s3cr%40t-token"])
def test_what_git_itself_echoes_of_a_password_is_hidden(password):
    # For git://, git takes `bob:<password>@127.0.0.1` for a host name and prints it whole,
    # URL-decoded: the resource hides the password as written and as decoded.
    url = f"git://{USER}:{password}@127.0.0.1:{free_port()}/hello.git"
    raw = subprocess.run(
        ["git", "ls-remote", url], capture_output=True, text=True, timeout=30, check=False
    )
    assert f"{USER}:{unquote(password)}@" in raw.stderr  # git's words: what must be hidden
    with pytest.raises(GitError) as err:
        GitResource(timeout_s=30).head(repo=url, branch="main")
    assert f"unable to look up {USER}:***@127.0.0.1" in str(err.value)
    assert password not in str(err.value) and unquote(password) not in str(err.value)


def test_the_push_sensor_s_reasons_name_no_password(tmp_path, app_repos, git_over_http):
    """A repo URL from elsewhere than a topology (the model's check bypassed): the poll reads
    it, and what it says of a repo it cannot read holds no password."""
    from infra_assets.topology.model import App

    repo = app_repos("hello")
    sha = repo.commit(message="one")
    git_over_http.publish(repo)
    apps = {
        "hello": App.model_construct(
            repo=git_over_http.repo_url("hello", f"{USER}:{SECRET}"), branch="main", port=8000
        ),
        "gone": App.model_construct(
            repo=f"git://{USER}:{SECRET}@127.0.0.1:{free_port()}/gone.git",
            branch="main",
            port=8000,
        ),
    }
    result = poll(apps=apps, cursor=Cursor(), git=GitResource(timeout_s=30), base_dir=tmp_path)
    assert result.waiting == {"hello": sha}  # read through the credentials: seen
    assert f"unable to look up {USER}:***@127.0.0.1" in result.unreachable["gone"]
    assert SECRET not in json.dumps(result.unreachable)


# --- the build: the job's script, podman, the registry ------------------------------------------


def build_host_env(tmp_path: Path, podman, git_over_http: GitOverHttp) -> dict[str, str]:
    """A build host as the topology's error asks for: podman, an auth file for the registry,
    and git's credential helper holding the repo's password (not the repo URL)."""
    home = tmp_path / "build-host"
    home.mkdir(exist_ok=True)
    store = home / "git-credentials"
    host = git_over_http.url.removeprefix("http://")
    store.write_text(f"http://{USER}:{SECRET}@{host}\n")
    store.chmod(0o600)
    (home / ".gitconfig").write_text(f"[credential]\n\thelper = store --file={store}\n")
    auth = home / "auth.json"
    auth.write_text('{"auths": {}}')
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": str(home),
        "GIT_TERMINAL_PROMPT": "0",
        **podman.env(),
        "REGISTRY_AUTH_FILE": str(auth),
        "REGISTRY_TLS_VERIFY": "false",
    }


def run_script(env: dict[str, str], workspace: Path) -> tuple[int, list[str]]:
    workspace.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out.returncode, (out.stdout + out.stderr).splitlines()


def image_labels(registry: RegistryResource, app: str, sha: str) -> dict[str, str]:
    manifest = registry.manifest(repository=app, reference=sha)
    assert manifest is not None, f"{app}:{sha} is not in the registry"
    return registry.labels(repository=app, manifest=manifest)


@pytest.mark.parametrize(
    "userinfo_host",
    [
        "https://bob:s3cr3t-token@127.0.0.1:{port}/a.git",
        "https://bob:s3cr%40t%3Atoken@127.0.0.1:{port}/a.git",
        "https://:s3cr3t-token@127.0.0.1:{port}/a.git",
        "https://bob:s3cr3t@token@127.0.0.1:{port}/a.git",
        "git://bob:s3cr3t-token@127.0.0.1:{port}/a.git",  # git prints it whole
        "git://bob:s3cr%40t-token@127.0.0.1:{port}/a.git",  # ... URL-decoded
        "ssh://git:s3cr3t-token@127.0.0.1:{port}/a.git",
        "bob:s3cr3t-token@127.0.0.1:coop/a.git",
        ":s3cr3t-token@127.0.0.1:coop/a.git",
    ],
)
def test_the_build_script_shows_the_repo_as_redact_repo_does(tmp_path, userinfo_host):
    """The script's own reading of REPO (shell, not Python) agrees with redact_repo, and what
    git says when the repo cannot be read holds the password in neither form."""
    repo = userinfo_host.format(port=free_port())
    sha = "a" * 40
    auth = tmp_path / "auth.json"
    auth.write_text('{"auths": {}}')
    code, lines = run_script(
        {
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=5",
            "APP": "a",
            "REPO": repo,
            "SHA": sha,
            "BRANCH": "main",
            "IMAGE": "127.0.0.1:1/a",
            "REGISTRY_AUTH_FILE": str(auth),
        },
        tmp_path / "workspace",
    )
    assert code != 0 and lines[0] == f"== checkout {redact_repo(repo)} {sha}", lines
    assert len(lines) > 1  # git's own words came too
    secrets = repo_secrets(repo)
    assert secrets and not [line for line in lines for s in secrets if s in line], lines
    if repo.startswith("git://"):
        assert any(f"{USER}:***@127.0.0.1" in line for line in lines), lines


@pytest.mark.slow
def test_the_build_script_labels_the_image_without_the_password(
    tmp_path, app_repos, git_over_http, podman, loopback_registry
):
    """The job run by hand with the password in REPO: git fetches with it, and neither the
    console nor the image's source label shows it."""
    repo = app_repos("hello-ci")
    sha = repo.commit(TINY_APP, "tiny")
    git_over_http.publish(repo)
    env = build_host_env(tmp_path, podman, git_over_http)
    (Path(env["HOME"]) / ".gitconfig").unlink()  # no helper: the URL's password is the one used
    registry = loopback_registry.endpoint()
    code, lines = run_script(
        {
            **env,
            "APP": "hello-ci",
            "REPO": git_over_http.repo_url("hello-ci", f"{USER}:{SECRET}"),
            "SHA": sha,
            "BRANCH": "main",
            "IMAGE": registry.image("hello-ci"),
        },
        tmp_path / "workspace",
    )
    assert code == 0, "\n".join(lines)
    shown = git_over_http.repo_url("hello-ci", USER)
    assert f"== checkout {shown} {sha}" in lines
    assert any(line.startswith("PUSHED_DIGEST=sha256:") for line in lines)
    assert ("/git/hello-ci.git/info/refs?service=git-upload-pack", 200, USER) in git_over_http.seen
    labels = image_labels(loopback_registry, "hello-ci", sha)
    assert labels[SOURCE_LABEL] == shown
    assert labels["org.opencontainers.image.revision"] == sha
    assert SECRET not in json.dumps(labels) and not [line for line in lines if SECRET in line]


def with_repo(topo, repo: str):
    """`topo` with every app's repo replaced by `repo`: a URL that reached the run by another
    way than a topology (which would refuse it)."""
    apps = {name: app.model_copy(update={"repo": repo}) for name, app in topo.apps.items()}
    return topo.model_copy(update={"apps": apps})


@pytest.mark.slow
def test_a_build_run_shows_no_password_that_reached_the_repo_url(
    tmp_path, app_repos, monkeypatch, git_over_http, podman, loopback_registry
):
    """git_push_sensor and a build of app_image through the `jenkins` builder (the fake Jenkins
    runs the job's real script), with a password in the repo URL: Dagster's own git reads the
    repo with it; the build gets the URL without it (its credential helper authenticates); the
    password is in no event of the run, no metadata, no Jenkins parameter, no console line,
    no build log line and no label of the image."""
    repo = app_repos("hello-ci")
    sha = repo.commit(TINY_APP, "tiny")
    git_over_http.publish(repo)
    secret_url = git_over_http.repo_url("hello-ci", f"{USER}:{SECRET}")
    shown = git_over_http.repo_url("hello-ci", USER)
    topo_file = write_app_topology(
        tmp_path / "topology.yaml", {"hello-ci": "git/hello-ci.git"}, cloud="catalyst"
    )
    monkeypatch.setenv("INFRA_TOPOLOGY", str(topo_file))
    monkeypatch.setenv("INFRA_STATE_DIR", str(tmp_path / "state"))
    topology_file = TopologyResource(path=str(topo_file))
    # The `topology` asset reads the file as checked, then gets every app's repo replaced.
    monkeypatch.setattr(
        topology_assets,
        "read_topology",
        lambda resource: with_repo(read_topology(resource), secret_url),
    )
    topo = topology_assets.read_topology(topology_file)
    assert topo.apps["hello-ci"].repo == secret_url
    env = build_host_env(tmp_path, podman, git_over_http)

    def job(params: dict[str, str], console: Console):
        code, lines = run_script({**env, **params}, tmp_path / "workspace")
        for line in lines:
            console.line(line)
        if code != 0:
            return "FAILURE", None
        digest = (tmp_path / "workspace" / "image-digest.txt").read_text().strip()
        return "SUCCESS", f"digest={digest}"

    with FakeJenkins(jobs={"app-image": job}) as fake:
        jenkins = JenkinsResource(
            url=fake.url, username=fake.username, api_token=fake.api_token, poll_interval_s=0.1
        )
        defs = delivery_defs(
            topo, topology_file=topology_file, registry=loopback_registry, jenkins=jenkins
        )
        instance = dg.DagsterInstance.ephemeral()
        result = push_sensor_build(defs, instance, build_only=True)  # no site to release on
    assert result.success
    [mat] = result.asset_materializations_for_node("app_image__hello_ci")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["repo"] == shown and meta["built"] is True
    build = fake.builds[("app-image", 1)]
    assert build.params["REPO"] == shown
    # The build host's credential helper answered for `bob`; Dagster's git used the URL's
    # password and moved the branch tag (the commit is still the branch's head).
    assert meta["tags"] == f"hello-ci:{sha}, hello-ci:main"
    assert loopback_registry.digest(repository="hello-ci", reference="main") == meta["digest"]
    labels = image_labels(loopback_registry, "hello-ci", sha)
    assert labels[SOURCE_LABEL] == shown

    events = [
        str(entry.dagster_event) if entry.dagster_event else entry.user_message
        for entry in instance.all_logs(result.run_id)
    ]
    messages = [entry.message for entry in instance.all_logs(result.run_id)]
    where = {
        "the run's events": "\n".join(events + messages),
        "the materialisation's metadata": json.dumps(meta, default=str),
        "the Jenkins parameters": json.dumps(build.params),
        "the Jenkins console": build.console.text(),
        "the build log": Path(meta["build_log"]).read_text(),
        "the image's labels": json.dumps(labels),
    }
    assert "== checkout " + shown in where["the build log"]
    assert not [name for name, text in where.items() if SECRET in text]
