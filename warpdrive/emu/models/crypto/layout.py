"""virtio-crypto as the device reads it (virtio 1.2 §5.9), little endian, for the model only.

Only what the model implements: the CIPHER service in session mode, with the layouts a driver
uses when VIRTIO_CRYPTO_F_REVISION_1 is not negotiated (the model offers no crypto feature bit,
like QEMU, and Linux 6.12 acknowledges none): the opcode-specific fixed part of a control
request is padded to 56 bytes and that of a data request to 48 (§5.9.7.2, §5.9.7.3), so both
requests have a 72-byte fixed part. Offsets below are from the start of the request.
"""

from __future__ import annotations

import struct

VIRTIO_ID = 20  # §5.9.1

# §5.9.3 services (bit numbers in crypto_services) and §5.9.3.1 CIPHER algorithms (bit numbers
# in cipher_algo_l/h, and values in requests)
SERVICE_CIPHER = 0
CIPHER_AES_ECB = 2
CIPHER_AES_CBC = 3
CIPHER_AES_CTR = 4
CIPHER_AES_XTS = 13

# §5.9.5 struct virtio_crypto_config: status, max_dataqueues, crypto_services, cipher_algo_l,
# cipher_algo_h, hash_algo, mac_algo_l, mac_algo_h, aead_algo, max_cipher_key_len,
# max_auth_key_len, akcipher_algo (reserved in 1.2), all le32; then max_size le64. 56 bytes.
CONFIG = struct.Struct("<12IQ")
S_HW_READY = 1

# §5.9.7.1 operation status
OK, ERR, BADMSG, NOTSUPP, INVSESS, NOSPC = 0, 1, 2, 3, 4, 5

# opcodes: VIRTIO_CRYPTO_OPCODE(service, op) = service << 8 | op (§5.9.7.2, §5.9.7.3)
CIPHER_CREATE_SESSION = SERVICE_CIPHER << 8 | 0x02
CIPHER_DESTROY_SESSION = SERVICE_CIPHER << 8 | 0x03
CIPHER_ENCRYPT = SERVICE_CIPHER << 8 | 0x00
CIPHER_DECRYPT = SERVICE_CIPHER << 8 | 0x01
OP_ENCRYPT, OP_DECRYPT = 1, 2  # struct virtio_crypto_cipher_session_flf.op
SYM_OP_CIPHER = 1  # op_type of symmetric sessions and requests

# §5.9.7.2 control request: struct virtio_crypto_ctrl_header {opcode, algo, flag, reserved}
CTRL_HEADER = struct.Struct("<IIII")
CTRL_FIXED_LEN = 16 + 56  # header + op_flf padded to 56
# CIPHER_CREATE_SESSION op_flf = virtio_crypto_sym_create_session_flf: op_flf[48] holding
# virtio_crypto_cipher_session_flf {algo, key_len, op, padding}, then op_type le32, padding.
CIPHER_SESSION_FLF = struct.Struct("<III")  # at 16: algo, key_len, op
SYM_CREATE_OP_TYPE = struct.Struct("<I")  # at 16 + 48
SYM_CREATE_OP_TYPE_OFF = 16 + 48
# ... followed by op_vlf: cipher_key[key_len] (at CTRL_FIXED_LEN)
# DESTROY_SESSION op_flf = virtio_crypto_destroy_session_flf {session_id le64}
DESTROY_FLF = struct.Struct("<Q")  # at 16
# outcomes (device-writable): create: {session_id le64, status le32, padding le32}; destroy:
# {status u8}
CREATE_SESSION_INPUT = struct.Struct("<QII")
DESTROY_SESSION_INPUT_LEN = 1

# §5.9.7.3 data request: struct virtio_crypto_op_header {opcode, algo, session_id le64, flag,
# padding}, then op_flf padded to 48: virtio_crypto_sym_data_flf = op_type_flf[40] holding
# virtio_crypto_cipher_data_flf {iv_len, src_data_len, dst_data_len, padding}, then op_type.
DATA_HEADER = struct.Struct("<IIQII")
DATA_FIXED_LEN = 24 + 48
CIPHER_DATA_FLF = struct.Struct("<III")  # at 24: iv_len, src_data_len, dst_data_len
SYM_DATA_OP_TYPE = struct.Struct("<I")  # at 24 + 40
SYM_DATA_OP_TYPE_OFF = 24 + 40
# op_vlf: iv[iv_len], src_data[src_data_len] (device-readable), dst_data[dst_data_len]
# (device-writable), then struct virtio_crypto_inhdr {status u8}: the last writable byte.
