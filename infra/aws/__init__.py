"""AWS backends: DynamoDB key and state stores, EC2 compute, SSM server secrets.

Each module implements one of :mod:`infra.interfaces` on AWS; :mod:`infra.aws.backends`
builds them. All AWS calls go through :mod:`infra.aws.client`, which runs them on
aiobotocore (the edge's request path: one client per service per process) or boto3
(CLI, container, reaper) behind the same ``call`` so the table logic exists once.

Resources (template.yaml creates them; ``ocedge --stack NAME`` reads their names
from the stack's outputs, see :mod:`infra.aws.stack`):

**Keys table** (output ``KeysTable``, setting ``OCEDGE_KEYS_TABLE``)::

    KeySchema:            pk (HASH, S), sk (RANGE, S)
    BillingMode:          PAY_PER_REQUEST
    no indexes, no TTL, no streams

    pk="admin"     sk="admin"         username S, password_hash B (argon2id string)
    pk="apikey"    sk=<key id>        name S, secret_hash B, created N,
                                      [expires N], [revoked N], [last_used N]
    pk="provider"  sk=<provider id>   sealed B (SecretBox), created N, updated N

  One partition per kind, so ``keys list`` / ``provider list`` are a Query, never a
  Scan. The table holds only hashes and sealed values: a copy of it opens nothing
  without the SSM parameter.

**State table** (output ``StateTable``, setting ``OCEDGE_STATE_TABLE``)::

    KeySchema:            pk (HASH, S)
    BillingMode:          PAY_PER_REQUEST

    pk="state"   status S, generation N, since N, busy BOOL, writer S, written N,
                 [endpoint S], [credential S], [cert_pem S], [deadline N],
                 [last_activity N], [lease_owner S], [reason S]

  One item per deployment. It does not exist until the first transition; a missing
  item reads as ``stopped``, generation 0. Every write is conditional on the
  generation (and status) the writer expects.

**Secrets parameter** (output ``SecretsParameter``, setting ``OCEDGE_SECRETS_PARAMETER``):
an SSM ``SecureString`` holding ``{"version": 1, "sealing_key": hex, "pepper": hex,
"session_secret": hex}`` (32 random bytes each). CloudFormation cannot create a
SecureString, so ``ocedge init`` (or the first edge or CLI that needs it) creates it,
never overwriting an existing one.

**Instance** (output ``InstanceId``, setting ``OCEDGE_INSTANCE_ID``): the EC2 instance
that runs the container; stopped while asleep.

IAM, per role:

- edge: dynamodb:GetItem/PutItem/UpdateItem/Query on both tables; ec2:StartInstances,
  ec2:DescribeInstances on the instance; ssm:GetParameter (WithDecryption) and
  ssm:PutParameter on the parameter (first start before ``ocedge init``);
- container: dynamodb:GetItem/PutItem/UpdateItem/Query on both tables; ssm:GetParameter
  on the parameter (it opens the provider keys);
- reaper: dynamodb:GetItem/PutItem on the state table; ec2:StopInstances,
  ec2:DescribeInstances on the instance.
"""
