"""odal.serving: a TF Serving-compatible model server (``odal serve``) and the client odal uses to reach either it
or the real ``tensorflow_model_server``.

Public modules: ``client`` (ServingClient, Detections; never imports TensorFlow) and ``server`` (``main(argv)``).
Machinery: ``discovery`` (versions and policies), ``registry`` (loaded versions and their states), ``predict``,
``grpc_api``, ``rest_api``, ``rest_json`` and ``rest_fast`` (the two front ends; numpy parsing of JSON pixels),
``http_server`` (the bounded HTTP server under REST), ``batching`` (--enable_batching), ``metrics`` (Prometheus),
``config_protos`` (TF Serving's monitoring and batching text protos), ``limits`` (every bound on client input), ``preview`` (short previews of client values for messages),
``loader`` (the only module importing TensorFlow), ``tensors`` (numpy <-> TensorProto), ``errors``
(ServingError), ``_protos`` (TF Serving's protos).
For the demo, benchmarks and tests: ``process`` (the server as a child process on free loopback ports).
"""
