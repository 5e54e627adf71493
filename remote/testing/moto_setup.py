"""Sets up a moto_server that checks credentials (started with
INITIAL_NO_AUTH_ACTION_COUNT=3): the three unauthenticated calls create a user with an
allow-all policy and its access key. Prints the key id and secret. Used by moto.rs."""
import json
import sys

import boto3

endpoint = sys.argv[1]
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
iam = boto3.client("iam", **kw)
iam.create_user(UserName="cifar-tests")
policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
iam.put_user_policy(UserName="cifar-tests", PolicyName="all", PolicyDocument=json.dumps(policy))
key = iam.create_access_key(UserName="cifar-tests")["AccessKey"]
print(key["AccessKeyId"], key["SecretAccessKey"])
