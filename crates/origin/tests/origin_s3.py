#!/usr/bin/env python3
"""An S3 origin for crates/origin/tests/s3.rs: moto's server on 127.0.0.1 at a port the OS
picks, with bucket `images` holding the files named on the command line.

Usage: origin_s3.py INFO_FILE KEY=PATH...

The first requests (the set-up below) run without authentication; from then on moto checks
SigV4 and IAM: the access key written to INFO_FILE (JSON: port, key_id, secret) belongs to
a user who may only read `images/tftp/public/*` and read and write `images/tftp/incoming/*`,
so any other key is 403 AccessDenied.
"""
import json
import os
import sys

objects = [a.split("=", 1) for a in sys.argv[2:]]
# create_bucket, one put_object per object, then create_user, create_access_key and
# put_user_policy: after these, every request is authenticated.
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = str(len(objects) + 4)

import boto3  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=True)
server.start()
host, port = server.get_host_and_port()
endpoint = f"http://{host}:{port}"
common = dict(endpoint_url=endpoint, region_name="us-east-1",
              aws_access_key_id="setup", aws_secret_access_key="setup")
s3 = boto3.client("s3", **common)
s3.create_bucket(Bucket="images")
for key, path in objects:
    with open(path, "rb") as f:
        s3.put_object(Bucket="images", Key=key, Body=f.read())
iam = boto3.client("iam", **common)
iam.create_user(UserName="tftpx")
key = iam.create_access_key(UserName="tftpx")["AccessKey"]
iam.put_user_policy(UserName="tftpx", PolicyName="read-public", PolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject",
         "Resource": ["arn:aws:s3:::images/tftp/public/*", "arn:aws:s3:::images/tftp/incoming/*"]},
        {"Effect": "Allow",
         "Action": ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
         "Resource": "arn:aws:s3:::images/tftp/incoming/*"},
    ],
}))
info = {"port": port, "key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    json.dump(info, f)
os.rename(tmp, sys.argv[1])
sys.stdout.flush()
# The server runs in its thread; the test kills this process when done.
import threading  # noqa: E402
threading.Event().wait()
