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
    TimeToLive:           attribute "ttl" (only failed-login counters have it)
    no indexes, no streams

    pk="admin"     sk="admin"         username S, password_hash B (argon2id string)
    pk="apikey"    sk=<key id>        name S, secret_hash B, created N,
                                      [expires N], [revoked N], [last_used N]
    pk="provider"  sk=<provider id>   sealed B (SecretBox), created N, updated N
    pk="login"     sk="login"         [epoch N] (session epoch), [totp_sealed B],
                                      [totp_step N] (last used code's time step)
    pk="failures"  sk=<"ip:…"|"global"> count N, since N (window start), ttl N
    pk="secret"    sk=<name>          sealed B (SecretBox), created N, updated N

  One partition per kind, so ``keys list`` / ``provider list`` are a Query, never a
  Scan. The table holds only hashes and sealed values: a copy of it opens nothing
  without the SSM parameter.

**State table** (output ``StateTable``, setting ``OCEDGE_STATE_TABLE``)::

    KeySchema:            pk (HASH, S)
    BillingMode:          PAY_PER_REQUEST

    pk="state"   status S, generation N, since N, busy BOOL, writer S, written N,
                 [endpoint S], [credential S], [cert_pem S], [deadline N],
                 [last_activity N], [lease_owner S], [reason S], [host S],
                 steps L (of [step S, time N] lists)

  One item per deployment. It does not exist until the first transition; a missing
  item reads as ``stopped``, generation 0. Every write is conditional on the
  generation (and status) the writer expects.

**Secrets parameters**, two SSM ``SecureString``s split by who reads them
(:mod:`infra.aws.secrets`, documents of :mod:`infra.secrets`): the edge's (output
``SecretsParameter``, setting ``OCEDGE_SECRETS_PARAMETER``: the API-key peppers and the
cookie key) and the container's (output ``ContainerSecretsParameter``, setting
``OCEDGE_CONTAINER_SECRETS_PARAMETER``: the sealing key). CloudFormation cannot create a
SecureString, so ``ocedge init`` creates them (the edge creates its own if it starts
first); only ``ocedge admin rotate-secrets`` replaces them.

**Instance** (output ``InstanceId``, setting ``OCEDGE_INSTANCE_ID``): the EC2 instance
that runs the container; stopped while asleep.

IAM, per role:

- edge: dynamodb:GetItem/PutItem/UpdateItem/Query on both tables; ec2:StartInstances,
  ec2:DescribeInstances on the instance; ssm:GetParameter (WithDecryption) and
  ssm:PutParameter on the edge's parameter only (first start before ``ocedge init``);
- container (the host role): dynamodb:GetItem/Query on the keys table for
  pk="provider" only, dynamodb:GetItem/PutItem/UpdateItem on the state table for
  pk="state" only (both by ``dynamodb:LeadingKeys``); ssm:GetParameter on the
  container's parameter only (it opens the provider keys), never the edge's; the host
  itself reads the state item at boot with the same role (deploy/host/start-requested.sh:
  dynamodb:GetItem, pk="state") to decide whether a start was asked of it;
- reaper: dynamodb:GetItem/PutItem on the state table; ec2:StopInstances,
  ec2:DescribeInstances on the instance.
"""
