r"""Register asr-optimize's block types with the Prefect API and create the default block documents.

    python -m deploy.register_blocks                       # local store ./model_store, local Triton defaults
    python -m deploy.register_blocks --s3-bucket models --s3-endpoint http://minio:9000 \
        --credentials-block minio --results-block    # S3 store + Prefect results in the same bucket

Existing documents are kept unless ``--overwrite`` is given. Credentials are never passed on the command line:
an S3 store uses an ``aws-credentials`` block named by ``--credentials-block`` (create it in the UI), or boto3's
default chain (environment, profile, instance role) on each worker.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from uuid import UUID

from prefect.blocks.core import Block
from prefect.client.orchestration import get_client

from asr_optimize.settings import get_settings
from blocks.model_store import HAVE_PREFECT_AWS, ModelStore
from blocks.triton_target import TritonTarget

STORE_BLOCK = "asr-optimize-store"
TRITON_BLOCK = "asr-optimize-triton"
RESULTS_BLOCK = "asr-optimize-results"


def _save(block: Block, name: str, overwrite: bool) -> UUID:
    """Save ``block`` as ``name`` unless a document of that name exists (or ``overwrite``); its document id."""
    slug = f"{block.get_block_type_slug()}/{name}"
    try:
        existing: Block | None = type(block).load(name)
    except ValueError:
        existing = None
    if existing is not None and not overwrite:
        print(f"kept     {slug}")
        return existing._block_document_id  # type: ignore[return-value]
    block_id = block.save(name, overwrite=True)
    print(f"{'replaced' if existing else 'created '} {slug}")
    return block_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store-path", default=get_settings().store, help="folder of the default local store")
    parser.add_argument("--s3-bucket", help="make the store an S3 bucket instead of a folder")
    parser.add_argument("--s3-prefix", default="asr-optimize")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (MinIO)")
    parser.add_argument("--region")
    parser.add_argument("--credentials-block", help="name of an existing prefect-aws aws-credentials block")
    parser.add_argument("--results-block", action="store_true",
                        help=f"also create an s3-bucket block {RESULTS_BLOCK!r} for Prefect result storage")
    parser.add_argument("--triton-http", default="http://127.0.0.1:8000")
    parser.add_argument("--triton-grpc", default="127.0.0.1:8001")
    parser.add_argument("--triton-repository", default=str(get_settings().triton_repository))
    parser.add_argument("--overwrite", action="store_true", help="replace existing documents")
    args = parser.parse_args(argv)

    for cls in (ModelStore, TritonTarget):
        cls.register_type_and_schema()
    credentials = None
    if HAVE_PREFECT_AWS:
        from prefect_aws import AwsCredentials, S3Bucket

        AwsCredentials.register_type_and_schema()
        S3Bucket.register_type_and_schema()
        if args.credentials_block:
            credentials = AwsCredentials.load(args.credentials_block)
    elif args.credentials_block or args.results_block:
        parser.error("--credentials-block and --results-block need prefect-aws (pip install prefect-aws)")

    if args.s3_bucket:
        store = ModelStore(kind="s3", bucket=args.s3_bucket, prefix=args.s3_prefix, endpoint_url=args.s3_endpoint,
                           region=args.region, **({"credentials": credentials} if credentials else {}))
    else:
        store = ModelStore(kind="local", path=str(Path(args.store_path).resolve()))
    _save(store, STORE_BLOCK, args.overwrite)
    triton = TritonTarget(http_url=args.triton_http, grpc_url=args.triton_grpc, repository=args.triton_repository,
                          repository_endpoint_url=args.s3_endpoint if args.triton_repository.startswith("s3://")
                          else None)
    _save(triton, TRITON_BLOCK, args.overwrite)
    if args.results_block:
        if not args.s3_bucket:
            parser.error("--results-block needs --s3-bucket")
        from prefect_aws import AwsCredentials, S3Bucket

        creds = credentials or AwsCredentials()
        if args.s3_endpoint:
            creds = creds.model_copy(update={"aws_client_parameters": creds.aws_client_parameters.model_copy(
                update={"endpoint_url": args.s3_endpoint})})
        results = S3Bucket(bucket_name=args.s3_bucket, bucket_folder=f"{args.s3_prefix}/prefect-results",
                           credentials=creds)
        results_id = _save(results, RESULTS_BLOCK, args.overwrite)
        with get_client(sync_client=True) as client:  # every flow/task run on this server persists results there
            client.update_server_default_result_storage(results_id)
        print(f"server default result storage: s3-bucket/{RESULTS_BLOCK} (s3://{args.s3_bucket}/"
              f"{results.bucket_folder}); per worker, PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK overrides it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
