"""Where a deployment's workspace lives in S3, and the record that it does."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from infra.settings import Settings


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/prefix`` at ``endpoint`` (None: AWS S3): the workspace's files, or
    the replica of opencode's database beside them (:attr:`database`)."""

    bucket: str
    prefix: str
    endpoint: str | None = None
    region: str | None = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def where(self) -> str:
        return f"{self.url} at {self.endpoint or 'AWS S3'}"

    @property
    def database(self) -> S3Location:
        """Where opencode's database is replicated: beside the workspace, never inside
        the mount, so nothing working in the workspace can touch it."""
        return dataclasses.replace(self, prefix=f"{self.prefix}-state/opencode.db")

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Location:
        assert settings.s3_bucket
        env = settings.system_env
        region = settings.aws_region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        return cls(settings.s3_bucket, settings.s3_prefix.strip("/") or "workspace",
                   settings.s3_endpoint, region)


def s3_marker(settings: Settings) -> Path:
    """Written when a state directory's workspace is first mounted from S3: from then
    on a local workspace there would be an empty stand-in for the real one."""
    return settings.state_dir.resolve() / "workspace-on-s3.json"
