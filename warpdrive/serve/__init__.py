"""`warpdrive serve`: share one ZIP function among many processes without SVA.

The broker owns the device and serves each client process its own virtual ZIP function over
vfio-user (`warpdrive.emu.server`, one function per connection). Clients run the unchanged ZIP
driver (`device="broker:PATH"`); their SQ rings and doorbells live in shared memory the broker
polls, and every SQE is checked and translated before it reaches a hardware queue
(`serve.sqe`, `serve.maps`). See `serve.broker` for queue sharing and `serve.access` for who may
connect.
"""
