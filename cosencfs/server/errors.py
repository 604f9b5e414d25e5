"""COS error codes and the exception that carries one to the HTTP layer."""

from __future__ import annotations

#: error code -> (HTTP status, default message), as COS answers them.
_CODES: dict[str, tuple[int, str]] = {
    "AccessDenied": (403, "Access Denied."),
    "BadDigest": (400, "The Content-MD5 you specified did not match what we received."),
    "BucketAlreadyOwnedByYou": (409, "The bucket you tried to create already exists."),
    "BucketNotEmpty": (409, "The bucket you tried to delete is not empty."),
    "EntityTooLarge": (400, "Your proposed upload exceeds the maximum allowed object size."),
    "EntityTooSmall": (
        400,
        "Your proposed upload is smaller than the minimum allowed object size.",
    ),
    "IncompleteBody": (400, "The request body ended before Content-Length was reached."),
    "InternalError": (500, "We encountered an internal error. Please try again."),
    "InvalidAccessKeyId": (403, "The SecretId you provided does not exist."),
    "InvalidArgument": (400, "Invalid Argument."),
    "InvalidBucketName": (400, "The specified bucket is not valid."),
    "InvalidDigest": (400, "The Content-MD5 you specified is not valid."),
    "InvalidPart": (400, "One or more of the specified parts could not be found."),
    "InvalidPartOrder": (400, "The list of parts was not in ascending order."),
    "InvalidRange": (416, "The requested range is not satisfiable."),
    "InvalidRequest": (400, "Invalid Request."),
    "InvalidURI": (400, "Couldn't parse the specified URI."),
    "KeyTooLong": (400, "Your key is too long."),
    "MalformedXML": (400, "The XML you provided was not well-formed."),
    "MetadataTooLarge": (400, "Your metadata headers exceed the maximum allowed metadata size."),
    "MethodNotAllowed": (405, "The specified method is not allowed against this resource."),
    "NoSuchBucket": (404, "The specified bucket does not exist."),
    "NoSuchKey": (404, "The specified key does not exist."),
    "NoSuchUpload": (404, "The specified multipart upload does not exist."),
    "NotImplemented": (501, "The functionality you requested is not implemented."),
    "PreconditionFailed": (412, "At least one of the preconditions you specified did not hold."),
    "RequestTimeTooSkewed": (
        403,
        "The difference between the request time and the server's time is too large.",
    ),
    "SignatureDoesNotMatch": (
        403,
        "The Signature you specified does not match what we calculated.",
    ),
    "SlowDown": (503, "Please reduce your request rate."),
}


class CosError(Exception):
    """A COS error answer: code, HTTP status and message.

    Raised anywhere below the HTTP handler; the handler turns it into the
    COS-shaped XML error body.
    """

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        status: int | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        default_status, default_message = _CODES.get(code, (400, code))
        self.code = code
        #: Extra response headers (Content-Range of a 416).
        self.headers = headers or []
        self.status = status if status is not None else default_status
        self.message = message if message is not None else default_message
        super().__init__(f"{code}: {self.message}")


def status_of(code: str) -> int:
    """The HTTP status COS uses for ``code`` (400 when unknown)."""
    return _CODES.get(code, (400, ""))[0]
