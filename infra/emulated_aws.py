"""An emulated AWS for ``ocedge dev --aws emulated``: a deployment's AWS path on one
machine, to rehearse what otherwise only runs on AWS.

- A moto server on 127.0.0.1 holds what ``sam deploy`` creates: the two tables, the
  workspace bucket, the EC2 instance, and a CloudFormation stack whose outputs name
  them, so ``ocedge --stack NAME`` commands (``ocedge init --stack NAME`` first) work
  against it as against AWS.
- Its instance walks through EC2's in-between states (docs.aws.amazon.com/AWSEC2/latest/
  UserGuide/monitoring-instance-state-changes.html): a start makes it ``pending``, then
  ``running``; a stop ``stopping``, then ``stopped``. Like EC2 it refuses to start an
  instance that is still stopping, or to stop one that is still pending.
- A host stand-in plays the instance's OS. Whenever the instance comes up it runs the
  user data's decision (deploy/host/start-requested.sh, with the AWS CLI) and then the
  real container (``python -m container``: AWS backends, S3 workspace, TLS gate) or a
  power-off. The container's exit status works the power switch as
  deploy/host/ocedge.service does: asleep powers off, a crash restarts it (five in ten
  minutes power off), 0 leaves the host as it is; a stop from outside shuts the
  container down first, as the OS does.

Everything lives in memory for as long as ``ocedge dev`` runs."""

from __future__ import annotations

import io
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from infra.emulated_s3 import CREDENTIALS, REGION
from infra.lifecycle import EXIT_ASLEEP
from infra.net import free_port
from infra.settings import PROJECT_ROOT, Settings

log = logging.getLogger("ocedge.emulated_aws")

STACK = "ocedge-emulated"
KEYS_TABLE, STATE_TABLE = f"{STACK}-keys", f"{STACK}-state"
BUCKET = f"{STACK}-workspace"
DECISION = PROJECT_ROOT / "deploy" / "host" / "start-requested.sh"
# EC2's in-between states in real seconds (infra/aws/compute.py), run ``scale`` times as long.
PENDING, STOPPING = 15.0, 30.0
CODES = {"pending": 0, "running": 16, "stopping": 64, "stopped": 80}
Environ = dict[str, Any]
StartResponse = Callable[..., Any]


def _error(start_response: StartResponse, code: str, message: str) -> list[bytes]:
    """An EC2 (query protocol) error, as botocore parses it."""
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}'
            f"</Code><Message>{message}</Message></Error></Errors><RequestID>emulated"
            "</RequestID></Response>").encode()
    start_response("400 Bad Request", [("Content-Type", "text/xml"),
                                       ("Content-Length", str(len(body)))])
    return [body]


class Ec2States:
    """moto's server app with EC2's in-between states for one instance, one request at
    a time (DynamoDB's conditional writes are atomic; moto's threads are not)."""

    def __init__(self, app: Callable[[Environ, StartResponse], Iterable[bytes]],
                 scale: float, journal: Path) -> None:
        self.app = app
        self.lock = threading.RLock()
        self.durations = {"pending": PENDING * scale, "stopping": STOPPING * scale}
        self.journal = journal
        self.instance_id = ""
        self.entered = ("stopped", time.monotonic())
        # Whether the host has let go of its container: a stop waits for that.
        self.host_down: Callable[[], bool] = lambda: True

    def _instance(self) -> Any:
        from moto.backends import get_backend
        from moto.core.models import DEFAULT_ACCOUNT_ID

        return get_backend("ec2")[DEFAULT_ACCOUNT_ID][REGION].get_instance(self.instance_id)

    def enter(self, name: str) -> None:
        with self.lock:
            instance = self._instance()
            instance._state.name, instance._state.code = name, CODES[name]
            self.entered = (name, time.monotonic())
            with open(self.journal, "a") as journal:
                journal.write(f"{time.time():.3f} {name}\n")

    def state(self) -> str:
        """The instance's state now, after any transition that is due."""
        with self.lock:
            name, since = self.entered
            due = name in self.durations and time.monotonic() - since >= self.durations[name]
            if due and name == "pending":
                self.enter("running")
            elif due and name == "stopping" and self.host_down():
                self.enter("stopped")
            return self.entered[0]

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        size = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(size) if size else b""
        environ["wsgi.input"] = io.BytesIO(body)
        form = parse_qs(body.decode("latin-1")) if b"Action=" in body else {}
        action = form.get("Action", [""])[0]
        ours = self.instance_id in form.get("InstanceId.1", [])
        with self.lock:
            if not ours or action not in ("StartInstances", "StopInstances"):
                return list(self.app(environ, start_response))
            before = self.state()
            if (action, before) in (("StartInstances", "stopping"), ("StopInstances", "pending")):
                verb = "started" if action == "StartInstances" else "stopped"
                return _error(start_response, "IncorrectInstanceState",
                              f"The instance '{self.instance_id}' is not in a state from "
                              f"which it can be {verb}.")
            answer = list(self.app(environ, start_response))
            if action == "StartInstances":
                self.enter("pending" if before == "stopped" else before)
            else:
                self.enter("stopping" if before == "running" else before)
            return answer


class HostStandIn:
    """The instance's OS: the user data's decision at each boot, then the container
    under the same rules as its systemd unit."""

    def __init__(self, ec2: Ec2States, power_off: Callable[[], None], env: dict[str, str],
                 root: Path, stop_timeout: float) -> None:
        self.ec2 = ec2
        self.power_off = power_off
        self.env = env
        self.root = root
        self.stop_timeout = stop_timeout
        self.log_file = root / "host.log"
        self.child: subprocess.Popen[bytes] | None = None
        self.up = False
        self.boots = 0
        self.exits: list[int] = []
        self.crashes: list[float] = []
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emulated-host", daemon=True)
        ec2.host_down = lambda: self.child is None

    def _say(self, line: str) -> None:
        with open(self.log_file, "a") as out:
            out.write(f"{time.strftime('%H:%M:%S')} host: {line}\n")

    def start(self) -> HostStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._quit.set()
        self._thread.join(timeout=self.stop_timeout + 10)
        self._shutdown()

    def _run(self) -> None:
        while not self._quit.is_set():
            name = self.ec2.state()
            if name == "running" and not self.up:
                self.up = True
                self._boot()
            elif name == "stopping" and self.child is not None:
                self._shutdown()  # the OS stops the container before it powers off
            elif name in ("stopping", "stopped"):
                self.up = False
            if self.child is not None and self.child.poll() is not None:
                self._exited(self.child.returncode)
            self._quit.wait(0.05)

    def _boot(self) -> None:
        self.boots += 1
        env = {"PATH": os.environ.get("PATH", os.defpath), "DESTDIR": str(self.root),
               **CREDENTIALS}
        with open(self.log_file, "ab") as out:
            decision = subprocess.run(["bash", str(DECISION)], env=env, stdout=out,
                                      stderr=subprocess.STDOUT, check=False, timeout=120)
        if decision.returncode == 0:
            self._say("a start was asked of this instance: starting the container")
            self._start_container()
        else:
            self._say(f"start-requested said {decision.returncode}: powering off")
            self.power_off()

    def _start_container(self) -> None:
        with open(self.root / "container.log", "ab") as out:
            self.child = subprocess.Popen(
                [sys.executable, "-m", "container"], env=self.env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=self.root)

    def _exited(self, code: int) -> None:
        self.child = None
        self.exits.append(code)
        if code == EXIT_ASLEEP:
            self._say("the container is asleep: powering off")
            self.power_off()
        elif code != 0:
            now = time.monotonic()
            self.crashes = [t for t in self.crashes if now - t < 600] + [now]
            if len(self.crashes) >= 5:
                self._say(f"the container crashed ({code}) five times: powering off")
                self.power_off()
            else:
                self._say(f"the container crashed ({code}): restarting it")
                self._start_container()

    def _shutdown(self) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            self.child = None
            return
        self._say("the instance is stopping: stopping the container")
        os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        self.exits.append(child.returncode)
        self.child = None


class EmulatedAws:
    """The emulated deployment of ``ocedge dev --aws emulated``; data under ``state_dir``."""

    def __init__(self, state_dir: Path, scale: float = 0.1) -> None:
        self.root = state_dir.resolve() / "emulated-aws"
        self.scale = scale
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.ec2: Ec2States | None = None
        self.host: HostStandIn | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, settings: Settings) -> EmulatedAws:
        """Serve the emulated AWS, create the deployment in it and start its host."""
        if shutil.which("aws") is None:
            raise RuntimeError("the AWS CLI (`aws`) is not installed: the host's decision "
                               "script uses it (Debian package awscli; `make setup-test`)")
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        self.root.mkdir(parents=True, exist_ok=True)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
        self.ec2 = Ec2States(DomainDispatcherApplication(create_backend_app), self.scale,
                             self.root / "ec2-states.log")
        self._server = make_server("127.0.0.1", self.port, self.ec2, threaded=True,
                                   request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        outputs = self._deploy()
        self.host = HostStandIn(self.ec2, self._power_off, self._container_env(settings, outputs),
                                self.root, settings.stop_budget + 15).start()
        return self

    def client(self, service: str) -> Any:
        import boto3

        session: Any = boto3.session.Session(
            region_name=REGION, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        return session.client(service, endpoint_url=self.endpoint)

    def _deploy(self) -> dict[str, str]:
        """What ``sam deploy`` leaves: tables shaped as template.yaml's, the bucket, the
        instance (stopped), and a stack whose outputs name them."""
        assert self.ec2 is not None
        ec2 = self.client("ec2")
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        self.ec2.instance_id = ec2.run_instances(
            ImageId=image, MinCount=1, MaxCount=1, InstanceType="t4g.small")["Instances"][0]["InstanceId"]
        self.ec2.enter("stopped")
        self.client("s3").create_bucket(Bucket=BUCKET)
        attribute = {"AttributeName": "pk", "AttributeType": "S"}
        tables = {
            "KeysTable": {"TableName": KEYS_TABLE, "BillingMode": "PAY_PER_REQUEST",
                          "AttributeDefinitions": [attribute, {**attribute, "AttributeName": "sk"}],
                          "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                                        {"AttributeName": "sk", "KeyType": "RANGE"}]},
            "StateTable": {"TableName": STATE_TABLE, "BillingMode": "PAY_PER_REQUEST",
                           "AttributeDefinitions": [attribute],
                           "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}]}}
        outputs = {"KeysTable": KEYS_TABLE, "StateTable": STATE_TABLE,
                   "InstanceId": self.ec2.instance_id, "BucketName": BUCKET, "Region": REGION,
                   "SecretsParameter": f"/opencode-edge/{STACK}/edge-secrets",
                   "ContainerSecretsParameter": f"/opencode-edge/{STACK}/container-secrets"}
        template = {"AWSTemplateFormatVersion": "2010-09-09",
                    "Resources": {name: {"Type": "AWS::DynamoDB::Table", "Properties": props}
                                  for name, props in tables.items()},
                    "Outputs": {name: {"Value": value} for name, value in outputs.items()}}
        self.client("cloudformation").create_stack(StackName=STACK,
                                                   TemplateBody=json.dumps(template))
        return outputs

    def _power_off(self) -> None:
        """The OS powering itself off (InstanceInitiatedShutdownBehavior=stop)."""
        assert self.ec2 is not None
        self.client("ec2").stop_instances(InstanceIds=[self.ec2.instance_id])

    def _container_env(self, settings: Settings, outputs: dict[str, str]) -> dict[str, str]:
        """The container's environment, as user-data.sh writes container.env (plus the
        emulator's endpoint and credentials), also written to the host's container.env."""
        from infra.aws.stack import apply_outputs

        assert self.ec2 is not None
        system_env = {k: v for k, v in settings.system_env.items()
                      if not k.startswith("AWS_")} | CREDENTIALS
        base = settings.with_overrides(
            backend="aws", stack=STACK, aws_endpoint=self.endpoint, aws_region=REGION,
            system_env=system_env, s3_bucket=None, workspace="local")
        container = apply_outputs(base, outputs).with_overrides(
            stack=None, instance_id=self.ec2.instance_id, s3_prefix="workspace",
            s3_endpoint=self.endpoint, gate=True, gate_host="127.0.0.1", gate_port=free_port(),
            public_host="127.0.0.1", state_dir=self.root / "host", stream_url=None)
        container.state_dir.mkdir(parents=True, exist_ok=True)
        env = container.child_env()
        settings_file = self.root / "etc" / "ocedge" / "container.env"
        settings_file.parent.mkdir(parents=True, exist_ok=True)
        settings_file.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(env.items())
                                         if k.startswith(("OCEDGE_", "AWS_"))))
        return env

    def edge_settings(self, settings: Settings) -> Settings:
        """``settings`` for the edge: the AWS backends, named by the emulated stack."""
        return settings.with_overrides(backend="aws", stack=STACK, aws_endpoint=self.endpoint,
                                       aws_region=REGION)

    def stop(self) -> None:
        """Stop the container (it saves the workspace), then the emulator."""
        if self.host is not None:
            self.host.stop()
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
