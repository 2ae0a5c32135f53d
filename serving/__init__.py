"""odal.serving: a TF Serving-compatible model server (``odal serve``) and the client odal uses to reach either it
or the real ``tensorflow_model_server``.

Public modules: ``client`` (ServingClient, Detections; never imports TensorFlow) and ``server`` (``main(argv)``).
Machinery: ``discovery`` (versions and policies), ``registry`` (loaded versions and their states), ``predict``,
``grpc_api``, ``rest_api`` and ``rest_json`` (the two front ends), ``http_server`` (the bounded HTTP server under
REST), ``limits`` (every bound on client input), ``preview`` (short previews of client values for messages),
``loader`` (the only module importing TensorFlow), ``tensors`` (numpy <-> TensorProto), ``errors``
(ServingError), ``_protos`` (TF Serving's protos).
For the demo, benchmarks and tests: ``process`` (the server as a child process on free loopback ports).
"""
