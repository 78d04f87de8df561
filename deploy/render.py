"""Build the parts of template.yaml that are programs of their own: the EC2 host's user
data (from deploy/host/) and the distribution's viewer-request function (from
deploy/cloudfront/).

The host is set up by one MIME document (cloud-config + shell script) that
CloudFormation fills in with ``Fn::Sub``. Editing it inside YAML, with every shell
``${var}`` written as ``${!var}``, invites mistakes, so the parts live as plain
files that shellcheck and systemd-analyze can read:

- ``host/cloud-config.yaml``: makes cloud-init run the script at every boot;
- ``host/user-data.sh``: the script; ``@Name@`` marks a stack value (``@Bucket@``,
  ``@AWS::Region@``) and a line ``@file:NAME@`` is replaced by ``host/NAME``;
- ``host/ocedge.service``, ``host/pull-image.sh``: the files the script writes.

The viewer-request function is ``cloudfront/viewer-request.js``, copied as it is into
the ``FunctionCode`` of ``ViewerRequestFunction`` (the tests run that copy under node).

``python deploy/render.py`` rewrites the blocks between the ``BEGIN <name>`` and
``END <name>`` lines of template.yaml (``user-data``, ``viewer-request``); ``--check``
fails if one is out of date (the tests run it); ``--sample`` prints the user data as an
instance would receive it, with made-up stack values.
"""

from __future__ import annotations

import argparse
import re
import sys
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST = HERE / "host"
VIEWER_REQUEST = HERE / "cloudfront" / "viewer-request.js"
TEMPLATE = HERE.parent / "template.yaml"

# EC2 refuses user data over 16 KiB (before base64).
USER_DATA_LIMIT = 16 * 1024
# CloudFront refuses a function over 10 KB ("Quotas on CloudFront Functions", Maximum
# function size: docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/cloudfront-limits.html).
FUNCTION_LIMIT = 10 * 1024

_TOKEN = re.compile(r"@([A-Za-z][A-Za-z0-9:.]*)@")
_FILE = re.compile(r"^@file:([A-Za-z0-9_.-]+)@$", re.MULTILINE)
_SUB_REF = re.compile(r"\$\{(!?)([^}]*)\}")

# Values an instance of a stack named "demo" in us-east-1 would see.
SAMPLE_VALUES = {
    "AWS::Region": "us-east-1",
    "AWS::StackName": "demo",
    "Repository.RepositoryUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/demo-repository",
    "ImageTag": "latest",
    "ContainerLogGroup": "/opencode-edge/demo/container",
    "Bucket": "demo-bucket-1a2b3c4d5e6f",
    "KeysTable": "demo-KeysTable-1A2B3C4D5E6F",
    "StateTable": "demo-StateTable-1A2B3C4D5E6F",
    "ContainerSecretsParameter": "/opencode-edge/demo/container-secrets",
    "IdleTimeout": "600",
    "GatePort": "8443",
    "TerminalPort": "8081",
    "NotifyTopic": "arn:aws:sns:us-east-1:123456789012:demo-NotifyTopic-1A2B3C4D5E6F",
    "PublicUrl": "",
    "ContainerPublicUrl": "",
    # What the OriginSecret custom resource makes: secrets.token_urlsafe(32).
    "OriginSecret.Value": "s4mple-0rigin-secret_0123456789abcdefghijkl",
}


def _script() -> str:
    """user-data.sh with the files it writes put in place."""
    text = (HOST / "user-data.sh").read_text()

    def inline(match: re.Match[str]) -> str:
        return (HOST / match.group(1)).read_text().rstrip("\n")

    return _FILE.sub(inline, text)


def mime_document() -> str:
    """The user data with ``@Name@`` stack tokens still in place."""
    doc = EmailMessage(policy=SMTP.clone(linesep="\n", max_line_length=0))
    doc.make_mixed()
    # cloud-init reads the document as MIME only when it finds this header.
    doc["MIME-Version"] = "1.0"
    for name, subtype, text in (
            ("cloud-config.txt", "cloud-config", (HOST / "cloud-config.yaml").read_text()),
            ("user-data.sh", "x-shellscript", _script())):
        part = EmailMessage(policy=doc.policy)
        part.set_content(text, subtype=subtype, charset="us-ascii", cte="7bit",
                         disposition="attachment", filename=name)
        doc.attach(part)
    # A fixed boundary keeps the rendered template stable from run to run.
    doc.set_boundary("==opencode-edge==")
    return doc.as_string()


def sub_body() -> str:
    """The ``Fn::Sub`` body: literal ``${`` escaped, ``@Name@`` turned into ``${Name}``."""
    text = mime_document().replace("${", "${!")
    return _TOKEN.sub(lambda m: "${" + m.group(1) + "}", text)


def substitute(body: str, values: dict[str, str]) -> str:
    """What CloudFormation makes of ``body``: ``${Name}`` from ``values``, ``${!x}`` → ``${x}``."""

    def resolve(match: re.Match[str]) -> str:
        if match.group(1):
            return "${" + match.group(2) + "}"
        return values[match.group(2)]

    return _SUB_REF.sub(resolve, body)


def viewer_request() -> str:
    """The distribution's viewer-request function, as CloudFront runs it."""
    return VIEWER_REQUEST.read_text()


def _user_data_lines(indent: str) -> list[str]:
    return [f"{indent}- |"] + [f"{indent}  {line}" if line else ""
                               for line in sub_body().splitlines()]


def _viewer_request_lines(indent: str) -> list[str]:
    return [f"{indent}FunctionCode: |"] + [f"{indent}  {line}" if line else ""
                                           for line in viewer_request().splitlines()]


# name → (where it comes from, the YAML lines between its BEGIN and END lines)
BLOCKS = {"user-data": ("deploy/host/; edit those files", _user_data_lines),
          "viewer-request": ("deploy/cloudfront/viewer-request.js; edit that file",
                             _viewer_request_lines)}


def rendered_block(name: str, indent: str) -> list[str]:
    source, lines = BLOCKS[name]
    return [f"{indent}# BEGIN {name}: generated by `python deploy/render.py` from {source},"
            " not this block", *lines(indent), f"{indent}# END {name}"]


def update(template: Path = TEMPLATE) -> tuple[str, str]:
    """(current text, text with every generated block freshly rendered)."""
    text = template.read_text()
    lines = text.splitlines()
    for name in BLOCKS:
        starts = [i for i, line in enumerate(lines)
                  if line.strip().startswith(f"# BEGIN {name}")]
        ends = [i for i, line in enumerate(lines) if line.strip() == f"# END {name}"]
        if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
            raise SystemExit(f"{template}: expected one '# BEGIN {name}' line followed by "
                             f"one '# END {name}' line")
        indent = lines[starts[0]][: len(lines[starts[0]]) - len(lines[starts[0]].lstrip())]
        lines = lines[: starts[0]] + rendered_block(name, indent) + lines[ends[0] + 1:]
    return text, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="fail if template.yaml's user data is out of date")
    mode.add_argument("--sample", action="store_true",
                      help="print the user data with sample stack values")
    args = parser.parse_args(argv)
    if args.sample:
        sys.stdout.write(substitute(sub_body(), SAMPLE_VALUES))
        return 0
    size = len(substitute(sub_body(), SAMPLE_VALUES).encode())
    if size > USER_DATA_LIMIT:
        print(f"user data is {size} bytes; EC2 takes at most {USER_DATA_LIMIT}", file=sys.stderr)
        return 1
    size = len(viewer_request().encode())
    if size > FUNCTION_LIMIT:
        print(f"the viewer-request function is {size} bytes; CloudFront takes at most "
              f"{FUNCTION_LIMIT}", file=sys.stderr)
        return 1
    current, fresh = update()
    if args.check:
        if current != fresh:
            print("template.yaml's generated blocks are out of date: run python deploy/render.py",
                  file=sys.stderr)
            return 1
        return 0
    if current != fresh:
        TEMPLATE.write_text(fresh)
        print("template.yaml: generated blocks updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
