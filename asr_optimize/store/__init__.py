"""The content-addressed artifact store: the contract and the local folder store (``local``), the S3 store (``s3``),
S3 model downloads (``s3_download``) and the one function that opens a store from a URI (``factory``)."""
