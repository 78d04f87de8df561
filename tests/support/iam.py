"""A small IAM policy evaluator for the template's roles: is this action on this
resource, with these condition keys, allowed?

It resolves the template's intrinsic functions to the ARNs a stack named ``demo`` in
us-east-1 of account 123456789012 would have, and evaluates Allow and Deny
statements with the condition operators the template uses (anything else fails the
test, never passes it). ``ForAllValues`` follows IAM: a key with no values in the
request satisfies it, which is why a role with ``dynamodb:LeadingKeys`` must be
granted only actions that always name their partition key.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

ACCOUNT = "123456789012"
REGION = "us-east-1"
STACK = "demo"
PSEUDO = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
          "AWS::StackName": STACK, "AWS::URLSuffix": "amazonaws.com"}
# What !GetAtt X.Arn / !Ref X stand for, by resource type.
_ARNS = {"AWS::DynamoDB::Table": "arn:aws:dynamodb:{region}:{account}:table/{stack}-{name}",
         "AWS::S3::Bucket": "arn:aws:s3:::{stack}-{name}",
         "AWS::Logs::LogGroup": "arn:aws:logs:{region}:{account}:log-group:{stack}-{name}:*",
         "AWS::ECR::Repository": "arn:aws:ecr:{region}:{account}:repository/{stack}-{name}"}


def resolve(value: Any, template: dict[str, Any]) -> Any:
    """``value`` with Ref, Fn::GetAtt and Fn::Sub replaced by sample values."""
    if isinstance(value, list):
        return [resolve(v, template) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        return {k: resolve(v, template) for k, v in value.items()}
    (fn, arg), = value.items()
    if fn == "Ref":
        return PSEUDO.get(arg) or _reference(arg, template, "Ref")
    if fn == "Fn::GetAtt":
        name, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
        return _reference(name, template, attribute)
    if fn == "Fn::Sub":
        text, names = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])

        def sub(match: re.Match[str]) -> str:
            key = match.group(1)
            if key in names:
                return str(resolve(names[key], template))
            if key in PSEUDO:
                return PSEUDO[key]
            name, _, attribute = key.partition(".")
            return _reference(name, template, attribute or "Ref")

        return re.sub(r"\$\{([^!}][^}]*)\}", sub, text)
    return {fn: resolve(arg, template)}


def _reference(name: str, template: dict[str, Any], attribute: str) -> str:
    kind = template["Resources"][name]["Type"]
    if attribute == "Arn" and kind in _ARNS:
        return _ARNS[kind].format(region=REGION, account=ACCOUNT, stack=STACK, name=name)
    if kind == "AWS::EC2::Instance":
        return "i-0123456789abcdef0"
    return f"{STACK}-{name}"


def role_statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """Every statement of ``role``'s inline policies and of the policies attached to it."""
    found: list[dict[str, Any]] = []
    properties = template["Resources"][role]["Properties"]
    documents = [p["PolicyDocument"] for p in properties.get("Policies", [])]
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::IAM::Policy" and {"Ref": role} in \
                resource["Properties"].get("Roles", []):
            documents.append(resource["Properties"]["PolicyDocument"])
    for document in documents:
        statements = document["Statement"]
        found += statements if isinstance(statements, list) else [statements]
    return [resolve(s, template) for s in found]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@dataclass
class Request:
    """One API call as IAM sees it."""

    action: str
    resource: str
    context: dict[str, list[str]] = field(default_factory=dict)


def _condition_holds(condition: dict[str, Any], context: dict[str, list[str]]) -> bool:
    for operator, tests in condition.items():
        qualifier, _, base = operator.rpartition(":")
        match = {"StringEquals": lambda v, p: v == p,
                 "StringLike": lambda v, p: fnmatch.fnmatchcase(v, p),
                 "Bool": lambda v, p: v.lower() == str(p).lower()}.get(base)
        if match is None or qualifier not in ("", "ForAllValues", "ForAnyValue"):
            raise AssertionError(f"the evaluator does not know the condition {operator}")
        for key, wanted in tests.items():
            patterns = [str(p) for p in _as_list(wanted)]
            values = context.get(key, [])
            hits = [any(match(v, p) for p in patterns) for v in values]
            if qualifier == "ForAllValues":
                ok = all(hits)  # true for a key the request does not carry, as in IAM
            elif qualifier == "ForAnyValue":
                ok = any(hits)
            else:
                ok = len(values) == 1 and hits[0]
            if not ok:
                return False
    return True


def _applies(statement: dict[str, Any], request: Request) -> bool:
    actions = [a.lower() for a in _as_list(statement.get("Action", []))]
    resources = _as_list(statement.get("Resource", []))
    return (any(fnmatch.fnmatchcase(request.action.lower(), a) for a in actions)
            and any(fnmatch.fnmatchcase(request.resource, r) for r in resources)
            and _condition_holds(statement.get("Condition", {}), request.context))


def allowed(statements: list[dict[str, Any]], request: Request) -> bool:
    """IAM's answer for an identity with these statements: an explicit Deny wins, then
    any Allow; nothing else is allowed."""
    if any(s["Effect"] == "Deny" and _applies(s, request) for s in statements):
        return False
    return any(s["Effect"] == "Allow" and _applies(s, request) for s in statements)


def table_arn(name: str) -> str:
    return _ARNS["AWS::DynamoDB::Table"].format(region=REGION, account=ACCOUNT, stack=STACK,
                                                 name=name)


def parameter_arn(path: str) -> str:
    return f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{path}"
