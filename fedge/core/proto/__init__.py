"""Generated gRPC stubs of ``cloud.proto`` (package ``fedge.cloud.v1``); never edit them."""
