"""Reaching the bucket the settings name: the store, and the check that the bucket is there.

Shared by the bucket-wide tools' commands (``rekey``, ``fsck``) and the mount,
so every command words a missing bucket, a refusal or an unreachable
endpoint the same way.
"""

from __future__ import annotations

import trio

from cosencfs.config import BucketSettings
from cosencfs.errors import AccessDeniedError, CosEncFsError, NoSuchBucketError
from cosencfs.store.cos import CosSettings, CosStore
from cosencfs.store.retry import RetryPolicy


def cos_settings(settings: BucketSettings) -> CosSettings:
    """How the store reaches the bucket."""
    return CosSettings(
        bucket=settings.bucket,
        region=settings.region,
        endpoint=settings.endpoint,
        secret_id=settings.secret_id,
        secret_key=settings.secret_key,
        token=settings.token,
        concurrency=settings.concurrency,
        timeout=settings.timeout,
        retry=RetryPolicy(deadline=settings.request_deadline),
        ca_file=settings.ca_file,
    )


def open_store(settings: BucketSettings) -> CosStore:
    """The store of the bucket (checks the endpoint; sends nothing yet)."""
    return CosStore(cos_settings(settings))


async def check_bucket(
    store: CosStore,
    settings: BucketSettings,
    *,
    unusable: type[CosEncFsError],
    unreachable: type[Exception],
) -> None:
    """HEAD the bucket; a missing or refused bucket, or an ``unreachable`` error or
    no answer in time, raise ``unusable`` with a message for a person."""
    where = settings.endpoint or f"region {settings.region}"
    try:
        with trio.fail_after(settings.request_deadline + 5):
            await store.head_bucket()
    except NoSuchBucketError:
        raise unusable(f"bucket {settings.bucket!r} does not exist at {where}") from None
    except AccessDeniedError as exc:
        raise unusable(
            f"access to bucket {settings.bucket!r} denied ({exc.code or 'AccessDenied'}): "
            "check COS_SECRET_ID / COS_SECRET_KEY and the bucket's permissions"
        ) from None
    except (unreachable, trio.TooSlowError) as exc:
        raise unusable(f"cannot reach COS at {where}: {exc}") from None
