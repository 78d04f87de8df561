"""Where the edge should dial this container: the gate's public address."""

from __future__ import annotations

import logging

from infra.settings import Settings

log = logging.getLogger("ocedge.container")

_IMDS = "http://169.254.169.254/latest"


async def public_host(settings: Settings) -> str:
    """``OCEDGE_PUBLIC_HOST``; on AWS the instance's public IPv4 from the instance
    metadata service (IMDSv2); else loopback."""
    if settings.public_host:
        return settings.public_host
    if settings.backend != "aws":
        return "127.0.0.1"
    import httpx

    try:
        async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
            token = (await client.put(
                f"{_IMDS}/api/token",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})).text
            response = await client.get(f"{_IMDS}/meta-data/public-ipv4",
                                        headers={"X-aws-ec2-metadata-token": token})
    except httpx.HTTPError as exc:
        raise RuntimeError(f"the instance metadata service did not answer "
                           f"({type(exc).__name__}); set OCEDGE_PUBLIC_HOST") from None
    if response.status_code != 200 or not response.text.strip():
        raise RuntimeError(f"the instance has no public IPv4 address (instance metadata "
                           f"answered {response.status_code}); set OCEDGE_PUBLIC_HOST")
    return response.text.strip()
