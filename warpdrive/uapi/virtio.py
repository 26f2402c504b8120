"""virtio uAPI in ctypes, named exactly as the Linux 6.12 headers: the modern virtio-pci transport
(`<linux/virtio_pci.h>`), the split and packed ring layouts (`<linux/virtio_ring.h>`), device status
and feature bits (`<linux/virtio_config.h>`), the device id (`<linux/virtio_ids.h>`) and the crypto
device (`<linux/virtio_crypto.h>`).

All virtio fields are little endian (`__le*` / `__virtio*` for a VERSION_1 device), so the structs
are `ctypes.LittleEndianStructure`/`LittleEndianUnion` (plain `Structure`/`Union` on x86 and arm64).
Layout conventions as in `warpdrive.uapi.vfio`: default alignment, flexible array members named in
`_flexible_` instead of `_fields_`. The C `union { ... } u;` members of the crypto requests are
private unions (they have no C tag) reached through the field `u`, as in C. The request structs are
the fixed-size (non-REVISION_1) layouts QEMU parses: `virtio_crypto_op_ctrl_req` and
`virtio_crypto_op_data_req` are 72 bytes each.

Not in the Linux 6.12 headers, so not here: the virtio-crypto feature bits
(`VIRTIO_CRYPTO_F_REVISION_1`, `*_STATELESS_MODE`), `VIRTIO_CRYPTO_SERVICE_IPSEC` and
`VIRTIO_CRYPTO_IPSEC_SA_SOFT_EXPIRY` (virtio spec / QEMU only), and the PCI vendor id 0x1af4 and
modern device id 0x1040 + id (spec rules, kernel-internal in Linux).
"""

from __future__ import annotations

import ctypes

__all__ = [
    "VIRTIO_CONFIG_S_ACKNOWLEDGE",
    "VIRTIO_CONFIG_S_DRIVER",
    "VIRTIO_CONFIG_S_DRIVER_OK",
    "VIRTIO_CONFIG_S_FAILED",
    "VIRTIO_CONFIG_S_FEATURES_OK",
    "VIRTIO_CONFIG_S_NEEDS_RESET",
    "VIRTIO_CRYPTO_AEAD_CCM",
    "VIRTIO_CRYPTO_AEAD_CHACHA20_POLY1305",
    "VIRTIO_CRYPTO_AEAD_CREATE_SESSION",
    "VIRTIO_CRYPTO_AEAD_DECRYPT",
    "VIRTIO_CRYPTO_AEAD_DESTROY_SESSION",
    "VIRTIO_CRYPTO_AEAD_ENCRYPT",
    "VIRTIO_CRYPTO_AEAD_GCM",
    "VIRTIO_CRYPTO_AKCIPHER_CREATE_SESSION",
    "VIRTIO_CRYPTO_AKCIPHER_DECRYPT",
    "VIRTIO_CRYPTO_AKCIPHER_DESTROY_SESSION",
    "VIRTIO_CRYPTO_AKCIPHER_DSA",
    "VIRTIO_CRYPTO_AKCIPHER_ECDSA",
    "VIRTIO_CRYPTO_AKCIPHER_ENCRYPT",
    "VIRTIO_CRYPTO_AKCIPHER_KEY_TYPE_PRIVATE",
    "VIRTIO_CRYPTO_AKCIPHER_KEY_TYPE_PUBLIC",
    "VIRTIO_CRYPTO_AKCIPHER_RSA",
    "VIRTIO_CRYPTO_AKCIPHER_SIGN",
    "VIRTIO_CRYPTO_AKCIPHER_VERIFY",
    "VIRTIO_CRYPTO_BADMSG",
    "VIRTIO_CRYPTO_CIPHER_3DES_CBC",
    "VIRTIO_CRYPTO_CIPHER_3DES_CTR",
    "VIRTIO_CRYPTO_CIPHER_3DES_ECB",
    "VIRTIO_CRYPTO_CIPHER_AES_CBC",
    "VIRTIO_CRYPTO_CIPHER_AES_CTR",
    "VIRTIO_CRYPTO_CIPHER_AES_ECB",
    "VIRTIO_CRYPTO_CIPHER_AES_F8",
    "VIRTIO_CRYPTO_CIPHER_AES_XTS",
    "VIRTIO_CRYPTO_CIPHER_ARC4",
    "VIRTIO_CRYPTO_CIPHER_CREATE_SESSION",
    "VIRTIO_CRYPTO_CIPHER_DECRYPT",
    "VIRTIO_CRYPTO_CIPHER_DESTROY_SESSION",
    "VIRTIO_CRYPTO_CIPHER_DES_CBC",
    "VIRTIO_CRYPTO_CIPHER_DES_ECB",
    "VIRTIO_CRYPTO_CIPHER_ENCRYPT",
    "VIRTIO_CRYPTO_CIPHER_KASUMI_F8",
    "VIRTIO_CRYPTO_CIPHER_SNOW3G_UEA2",
    "VIRTIO_CRYPTO_CIPHER_ZUC_EEA3",
    "VIRTIO_CRYPTO_CURVE_NIST_P192",
    "VIRTIO_CRYPTO_CURVE_NIST_P224",
    "VIRTIO_CRYPTO_CURVE_NIST_P256",
    "VIRTIO_CRYPTO_CURVE_NIST_P384",
    "VIRTIO_CRYPTO_CURVE_NIST_P521",
    "VIRTIO_CRYPTO_CURVE_UNKNOWN",
    "VIRTIO_CRYPTO_ERR",
    "VIRTIO_CRYPTO_HASH",
    "VIRTIO_CRYPTO_HASH_CREATE_SESSION",
    "VIRTIO_CRYPTO_HASH_DESTROY_SESSION",
    "VIRTIO_CRYPTO_HASH_MD5",
    "VIRTIO_CRYPTO_HASH_SHA1",
    "VIRTIO_CRYPTO_HASH_SHA3_224",
    "VIRTIO_CRYPTO_HASH_SHA3_256",
    "VIRTIO_CRYPTO_HASH_SHA3_384",
    "VIRTIO_CRYPTO_HASH_SHA3_512",
    "VIRTIO_CRYPTO_HASH_SHA3_SHAKE128",
    "VIRTIO_CRYPTO_HASH_SHA3_SHAKE256",
    "VIRTIO_CRYPTO_HASH_SHA_224",
    "VIRTIO_CRYPTO_HASH_SHA_256",
    "VIRTIO_CRYPTO_HASH_SHA_384",
    "VIRTIO_CRYPTO_HASH_SHA_512",
    "VIRTIO_CRYPTO_INVSESS",
    "VIRTIO_CRYPTO_KEY_REJECTED",
    "VIRTIO_CRYPTO_MAC",
    "VIRTIO_CRYPTO_MAC_CBCMAC_AES",
    "VIRTIO_CRYPTO_MAC_CBCMAC_KASUMI_F9",
    "VIRTIO_CRYPTO_MAC_CMAC_3DES",
    "VIRTIO_CRYPTO_MAC_CMAC_AES",
    "VIRTIO_CRYPTO_MAC_CREATE_SESSION",
    "VIRTIO_CRYPTO_MAC_DESTROY_SESSION",
    "VIRTIO_CRYPTO_MAC_GMAC_AES",
    "VIRTIO_CRYPTO_MAC_GMAC_TWOFISH",
    "VIRTIO_CRYPTO_MAC_HMAC_MD5",
    "VIRTIO_CRYPTO_MAC_HMAC_SHA1",
    "VIRTIO_CRYPTO_MAC_HMAC_SHA_224",
    "VIRTIO_CRYPTO_MAC_HMAC_SHA_256",
    "VIRTIO_CRYPTO_MAC_HMAC_SHA_384",
    "VIRTIO_CRYPTO_MAC_HMAC_SHA_512",
    "VIRTIO_CRYPTO_MAC_KASUMI_F9",
    "VIRTIO_CRYPTO_MAC_SNOW3G_UIA2",
    "VIRTIO_CRYPTO_MAC_XCBC_AES",
    "VIRTIO_CRYPTO_NOSPC",
    "VIRTIO_CRYPTO_NOTSUPP",
    "VIRTIO_CRYPTO_NO_AEAD",
    "VIRTIO_CRYPTO_NO_AKCIPHER",
    "VIRTIO_CRYPTO_NO_CIPHER",
    "VIRTIO_CRYPTO_NO_HASH",
    "VIRTIO_CRYPTO_NO_MAC",
    "VIRTIO_CRYPTO_OK",
    "VIRTIO_CRYPTO_OPCODE",
    "VIRTIO_CRYPTO_OP_DECRYPT",
    "VIRTIO_CRYPTO_OP_ENCRYPT",
    "VIRTIO_CRYPTO_RSA_MD2",
    "VIRTIO_CRYPTO_RSA_MD3",
    "VIRTIO_CRYPTO_RSA_MD4",
    "VIRTIO_CRYPTO_RSA_MD5",
    "VIRTIO_CRYPTO_RSA_NO_HASH",
    "VIRTIO_CRYPTO_RSA_PKCS1_PADDING",
    "VIRTIO_CRYPTO_RSA_RAW_PADDING",
    "VIRTIO_CRYPTO_RSA_SHA1",
    "VIRTIO_CRYPTO_RSA_SHA224",
    "VIRTIO_CRYPTO_RSA_SHA256",
    "VIRTIO_CRYPTO_RSA_SHA384",
    "VIRTIO_CRYPTO_RSA_SHA512",
    "VIRTIO_CRYPTO_SERVICE_AEAD",
    "VIRTIO_CRYPTO_SERVICE_AKCIPHER",
    "VIRTIO_CRYPTO_SERVICE_CIPHER",
    "VIRTIO_CRYPTO_SERVICE_HASH",
    "VIRTIO_CRYPTO_SERVICE_MAC",
    "VIRTIO_CRYPTO_SYM_ALG_CHAIN_ORDER_CIPHER_THEN_HASH",
    "VIRTIO_CRYPTO_SYM_ALG_CHAIN_ORDER_HASH_THEN_CIPHER",
    "VIRTIO_CRYPTO_SYM_HASH_MODE_AUTH",
    "VIRTIO_CRYPTO_SYM_HASH_MODE_NESTED",
    "VIRTIO_CRYPTO_SYM_HASH_MODE_PLAIN",
    "VIRTIO_CRYPTO_SYM_OP_ALGORITHM_CHAINING",
    "VIRTIO_CRYPTO_SYM_OP_CIPHER",
    "VIRTIO_CRYPTO_SYM_OP_NONE",
    "VIRTIO_CRYPTO_S_HW_READY",
    "VIRTIO_F_ACCESS_PLATFORM",
    "VIRTIO_F_ADMIN_VQ",
    "VIRTIO_F_IN_ORDER",
    "VIRTIO_F_IOMMU_PLATFORM",
    "VIRTIO_F_NOTIFICATION_DATA",
    "VIRTIO_F_NOTIF_CONFIG_DATA",
    "VIRTIO_F_ORDER_PLATFORM",
    "VIRTIO_F_RING_PACKED",
    "VIRTIO_F_RING_RESET",
    "VIRTIO_F_SR_IOV",
    "VIRTIO_F_VERSION_1",
    "VIRTIO_ID_CRYPTO",
    "VIRTIO_MSI_NO_VECTOR",
    "VIRTIO_PCI_CAP_BAR",
    "VIRTIO_PCI_CAP_CFG_TYPE",
    "VIRTIO_PCI_CAP_COMMON_CFG",
    "VIRTIO_PCI_CAP_DEVICE_CFG",
    "VIRTIO_PCI_CAP_ISR_CFG",
    "VIRTIO_PCI_CAP_LEN",
    "VIRTIO_PCI_CAP_LENGTH",
    "VIRTIO_PCI_CAP_NEXT",
    "VIRTIO_PCI_CAP_NOTIFY_CFG",
    "VIRTIO_PCI_CAP_OFFSET",
    "VIRTIO_PCI_CAP_PCI_CFG",
    "VIRTIO_PCI_CAP_SHARED_MEMORY_CFG",
    "VIRTIO_PCI_CAP_VNDR",
    "VIRTIO_PCI_COMMON_ADM_Q_IDX",
    "VIRTIO_PCI_COMMON_ADM_Q_NUM",
    "VIRTIO_PCI_COMMON_CFGGENERATION",
    "VIRTIO_PCI_COMMON_DF",
    "VIRTIO_PCI_COMMON_DFSELECT",
    "VIRTIO_PCI_COMMON_GF",
    "VIRTIO_PCI_COMMON_GFSELECT",
    "VIRTIO_PCI_COMMON_MSIX",
    "VIRTIO_PCI_COMMON_NUMQ",
    "VIRTIO_PCI_COMMON_Q_AVAILHI",
    "VIRTIO_PCI_COMMON_Q_AVAILLO",
    "VIRTIO_PCI_COMMON_Q_DESCHI",
    "VIRTIO_PCI_COMMON_Q_DESCLO",
    "VIRTIO_PCI_COMMON_Q_ENABLE",
    "VIRTIO_PCI_COMMON_Q_MSIX",
    "VIRTIO_PCI_COMMON_Q_NDATA",
    "VIRTIO_PCI_COMMON_Q_NOFF",
    "VIRTIO_PCI_COMMON_Q_RESET",
    "VIRTIO_PCI_COMMON_Q_SELECT",
    "VIRTIO_PCI_COMMON_Q_SIZE",
    "VIRTIO_PCI_COMMON_Q_USEDHI",
    "VIRTIO_PCI_COMMON_Q_USEDLO",
    "VIRTIO_PCI_COMMON_STATUS",
    "VIRTIO_PCI_ISR_CONFIG",
    "VIRTIO_PCI_NOTIFY_CAP_MULT",
    "VIRTIO_RING_F_EVENT_IDX",
    "VIRTIO_RING_F_INDIRECT_DESC",
    "VIRTIO_TRANSPORT_F_END",
    "VIRTIO_TRANSPORT_F_START",
    "VRING_AVAIL_ALIGN_SIZE",
    "VRING_AVAIL_F_NO_INTERRUPT",
    "VRING_DESC_ALIGN_SIZE",
    "VRING_DESC_F_INDIRECT",
    "VRING_DESC_F_NEXT",
    "VRING_DESC_F_WRITE",
    "VRING_PACKED_DESC_F_AVAIL",
    "VRING_PACKED_DESC_F_USED",
    "VRING_PACKED_EVENT_FLAG_DESC",
    "VRING_PACKED_EVENT_FLAG_DISABLE",
    "VRING_PACKED_EVENT_FLAG_ENABLE",
    "VRING_PACKED_EVENT_F_WRAP_CTR",
    "VRING_USED_ALIGN_SIZE",
    "VRING_USED_F_NO_NOTIFY",
    "virtio_crypto_aead_create_session_req",
    "virtio_crypto_aead_data_req",
    "virtio_crypto_aead_para",
    "virtio_crypto_aead_session_para",
    "virtio_crypto_akcipher_create_session_req",
    "virtio_crypto_akcipher_data_req",
    "virtio_crypto_akcipher_para",
    "virtio_crypto_akcipher_session_para",
    "virtio_crypto_alg_chain_data_para",
    "virtio_crypto_alg_chain_data_req",
    "virtio_crypto_alg_chain_session_para",
    "virtio_crypto_alg_chain_session_req",
    "virtio_crypto_cipher_data_req",
    "virtio_crypto_cipher_para",
    "virtio_crypto_cipher_session_para",
    "virtio_crypto_cipher_session_req",
    "virtio_crypto_config",
    "virtio_crypto_ctrl_header",
    "virtio_crypto_destroy_session_req",
    "virtio_crypto_ecdsa_session_para",
    "virtio_crypto_hash_create_session_req",
    "virtio_crypto_hash_data_req",
    "virtio_crypto_hash_para",
    "virtio_crypto_hash_session_para",
    "virtio_crypto_inhdr",
    "virtio_crypto_mac_create_session_req",
    "virtio_crypto_mac_data_req",
    "virtio_crypto_mac_para",
    "virtio_crypto_mac_session_para",
    "virtio_crypto_op_ctrl_req",
    "virtio_crypto_op_data_req",
    "virtio_crypto_op_header",
    "virtio_crypto_rsa_session_para",
    "virtio_crypto_session_input",
    "virtio_crypto_sym_create_session_req",
    "virtio_crypto_sym_data_req",
    "virtio_pci_cap",
    "virtio_pci_cap64",
    "virtio_pci_cfg_cap",
    "virtio_pci_common_cfg",
    "virtio_pci_modern_common_cfg",
    "virtio_pci_notify_cap",
    "vring_avail",
    "vring_desc",
    "vring_packed_desc",
    "vring_packed_desc_event",
    "vring_used",
    "vring_used_elem",
]

_S = ctypes.LittleEndianStructure
_U = ctypes.LittleEndianUnion
_u8 = ctypes.c_uint8
_le16 = ctypes.c_uint16
_le32 = ctypes.c_uint32
_le64 = ctypes.c_uint64

# == <linux/virtio_ids.h> ==========================================================================
VIRTIO_ID_CRYPTO = 20

# == <linux/virtio_config.h> =======================================================================
# device status bits
VIRTIO_CONFIG_S_ACKNOWLEDGE = 1
VIRTIO_CONFIG_S_DRIVER = 2
VIRTIO_CONFIG_S_DRIVER_OK = 4
VIRTIO_CONFIG_S_FEATURES_OK = 8
VIRTIO_CONFIG_S_NEEDS_RESET = 0x40
VIRTIO_CONFIG_S_FAILED = 0x80

# feature bits (bit numbers, not masks)
VIRTIO_TRANSPORT_F_START = 28
VIRTIO_TRANSPORT_F_END = 42
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_ACCESS_PLATFORM = 33
VIRTIO_F_IOMMU_PLATFORM = VIRTIO_F_ACCESS_PLATFORM
VIRTIO_F_RING_PACKED = 34
VIRTIO_F_IN_ORDER = 35
VIRTIO_F_ORDER_PLATFORM = 36
VIRTIO_F_SR_IOV = 37
VIRTIO_F_NOTIFICATION_DATA = 38
VIRTIO_F_NOTIF_CONFIG_DATA = 39
VIRTIO_F_RING_RESET = 40
VIRTIO_F_ADMIN_VQ = 41

# == <linux/virtio_pci.h> (modern transport) =======================================================
VIRTIO_PCI_ISR_CONFIG = 0x2  # ISR bit: configuration change (bit 0 = queue interrupt)
VIRTIO_MSI_NO_VECTOR = 0xFFFF

# virtio_pci_cap.cfg_type
VIRTIO_PCI_CAP_COMMON_CFG = 1
VIRTIO_PCI_CAP_NOTIFY_CFG = 2
VIRTIO_PCI_CAP_ISR_CFG = 3
VIRTIO_PCI_CAP_DEVICE_CFG = 4
VIRTIO_PCI_CAP_PCI_CFG = 5
VIRTIO_PCI_CAP_SHARED_MEMORY_CFG = 8


class virtio_pci_cap(_S):
    """A virtio vendor-specific (PCI_CAP_ID_VNDR) capability in config space."""

    _fields_ = [
        ("cap_vndr", _u8),
        ("cap_next", _u8),
        ("cap_len", _u8),
        ("cfg_type", _u8),
        ("bar", _u8),
        ("id", _u8),
        ("padding", _u8 * 2),
        ("offset", _le32),  # within the BAR
        ("length", _le32),
    ]


class virtio_pci_cap64(_S):
    _fields_ = [
        ("cap", virtio_pci_cap),
        ("offset_hi", _le32),
        ("length_hi", _le32),
    ]


class virtio_pci_notify_cap(_S):
    _fields_ = [
        ("cap", virtio_pci_cap),
        ("notify_off_multiplier", _le32),  # queue notify address = offset + notify_off * this
    ]


class virtio_pci_common_cfg(_S):
    """Common configuration structure (the header's names: guest_* is the spec's driver_*)."""

    _fields_ = [
        ("device_feature_select", _le32),
        ("device_feature", _le32),
        ("guest_feature_select", _le32),
        ("guest_feature", _le32),
        ("msix_config", _le16),
        ("num_queues", _le16),
        ("device_status", _u8),
        ("config_generation", _u8),
        ("queue_select", _le16),
        ("queue_size", _le16),
        ("queue_msix_vector", _le16),
        ("queue_enable", _le16),
        ("queue_notify_off", _le16),
        ("queue_desc_lo", _le32),
        ("queue_desc_hi", _le32),
        ("queue_avail_lo", _le32),
        ("queue_avail_hi", _le32),
        ("queue_used_lo", _le32),
        ("queue_used_hi", _le32),
    ]


class virtio_pci_modern_common_cfg(_S):
    _fields_ = [
        ("cfg", virtio_pci_common_cfg),
        ("queue_notify_data", _le16),
        ("queue_reset", _le16),
        ("admin_queue_index", _le16),
        ("admin_queue_num", _le16),
    ]


class virtio_pci_cfg_cap(_S):
    _fields_ = [
        ("cap", virtio_pci_cap),
        ("pci_cfg_data", _u8 * 4),
    ]


# byte offsets of virtio_pci_cap fields
VIRTIO_PCI_CAP_VNDR = 0
VIRTIO_PCI_CAP_NEXT = 1
VIRTIO_PCI_CAP_LEN = 2
VIRTIO_PCI_CAP_CFG_TYPE = 3
VIRTIO_PCI_CAP_BAR = 4
VIRTIO_PCI_CAP_OFFSET = 8
VIRTIO_PCI_CAP_LENGTH = 12
VIRTIO_PCI_NOTIFY_CAP_MULT = 16

# byte offsets in the common configuration structure (for explicit-width MMIO accessors)
VIRTIO_PCI_COMMON_DFSELECT = 0
VIRTIO_PCI_COMMON_DF = 4
VIRTIO_PCI_COMMON_GFSELECT = 8
VIRTIO_PCI_COMMON_GF = 12
VIRTIO_PCI_COMMON_MSIX = 16
VIRTIO_PCI_COMMON_NUMQ = 18
VIRTIO_PCI_COMMON_STATUS = 20
VIRTIO_PCI_COMMON_CFGGENERATION = 21
VIRTIO_PCI_COMMON_Q_SELECT = 22
VIRTIO_PCI_COMMON_Q_SIZE = 24
VIRTIO_PCI_COMMON_Q_MSIX = 26
VIRTIO_PCI_COMMON_Q_ENABLE = 28
VIRTIO_PCI_COMMON_Q_NOFF = 30
VIRTIO_PCI_COMMON_Q_DESCLO = 32
VIRTIO_PCI_COMMON_Q_DESCHI = 36
VIRTIO_PCI_COMMON_Q_AVAILLO = 40
VIRTIO_PCI_COMMON_Q_AVAILHI = 44
VIRTIO_PCI_COMMON_Q_USEDLO = 48
VIRTIO_PCI_COMMON_Q_USEDHI = 52
VIRTIO_PCI_COMMON_Q_NDATA = 56
VIRTIO_PCI_COMMON_Q_RESET = 58
VIRTIO_PCI_COMMON_ADM_Q_IDX = 60
VIRTIO_PCI_COMMON_ADM_Q_NUM = 62

# == <linux/virtio_ring.h> =========================================================================
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_PACKED_DESC_F_AVAIL = 7  # bit numbers
VRING_PACKED_DESC_F_USED = 15
VRING_USED_F_NO_NOTIFY = 1
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_PACKED_EVENT_FLAG_ENABLE = 0x0
VRING_PACKED_EVENT_FLAG_DISABLE = 0x1
VRING_PACKED_EVENT_FLAG_DESC = 0x2
VRING_PACKED_EVENT_F_WRAP_CTR = 15
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VRING_AVAIL_ALIGN_SIZE = 2
VRING_USED_ALIGN_SIZE = 4
VRING_DESC_ALIGN_SIZE = 16


class vring_desc(_S):
    _fields_ = [
        ("addr", _le64),  # IOVA
        ("len", _le32),
        ("flags", _le16),
        ("next", _le16),
    ]


class vring_avail(_S):
    _fields_ = [
        ("flags", _le16),
        ("idx", _le16),
        # flexible array member: __virtio16 ring[num] (then used_event with EVENT_IDX)
    ]
    _flexible_ = ("ring", _le16)


class vring_used_elem(_S):
    _fields_ = [
        ("id", _le32),  # head of the used descriptor chain
        ("len", _le32),  # bytes written into the chain
    ]


class vring_used(_S):
    _fields_ = [
        ("flags", _le16),
        ("idx", _le16),
        # flexible array member: vring_used_elem_t ring[num] (then avail_event with EVENT_IDX)
    ]
    _flexible_ = ("ring", vring_used_elem)


class vring_packed_desc_event(_S):
    _fields_ = [
        ("off_wrap", _le16),
        ("flags", _le16),
    ]


class vring_packed_desc(_S):
    _fields_ = [
        ("addr", _le64),
        ("len", _le32),
        ("id", _le16),
        ("flags", _le16),
    ]


# == <linux/virtio_crypto.h> =======================================================================
VIRTIO_CRYPTO_SERVICE_CIPHER = 0
VIRTIO_CRYPTO_SERVICE_HASH = 1
VIRTIO_CRYPTO_SERVICE_MAC = 2
VIRTIO_CRYPTO_SERVICE_AEAD = 3
VIRTIO_CRYPTO_SERVICE_AKCIPHER = 4


def VIRTIO_CRYPTO_OPCODE(service: int, op: int) -> int:  # C function-like macro name, verbatim
    return (service << 8) | op


# control queue opcodes (virtio_crypto_ctrl_header.opcode)
VIRTIO_CRYPTO_CIPHER_CREATE_SESSION = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_CIPHER, 0x02)
VIRTIO_CRYPTO_CIPHER_DESTROY_SESSION = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_CIPHER, 0x03)
VIRTIO_CRYPTO_HASH_CREATE_SESSION = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_HASH, 0x02)
VIRTIO_CRYPTO_HASH_DESTROY_SESSION = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_HASH, 0x03)
VIRTIO_CRYPTO_MAC_CREATE_SESSION = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_MAC, 0x02)
VIRTIO_CRYPTO_MAC_DESTROY_SESSION = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_MAC, 0x03)
VIRTIO_CRYPTO_AEAD_CREATE_SESSION = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_AEAD, 0x02)
VIRTIO_CRYPTO_AEAD_DESTROY_SESSION = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_AEAD, 0x03)
VIRTIO_CRYPTO_AKCIPHER_CREATE_SESSION = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_AKCIPHER, 0x04)
VIRTIO_CRYPTO_AKCIPHER_DESTROY_SESSION = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_AKCIPHER, 0x05)


class virtio_crypto_ctrl_header(_S):
    _fields_ = [
        ("opcode", _le32),
        ("algo", _le32),
        ("flag", _le32),
        ("queue_id", _le32),  # data virtqueue id
    ]


# cipher algorithms (values double as bit numbers in cipher_algo_l/h)
VIRTIO_CRYPTO_NO_CIPHER = 0
VIRTIO_CRYPTO_CIPHER_ARC4 = 1
VIRTIO_CRYPTO_CIPHER_AES_ECB = 2
VIRTIO_CRYPTO_CIPHER_AES_CBC = 3
VIRTIO_CRYPTO_CIPHER_AES_CTR = 4
VIRTIO_CRYPTO_CIPHER_DES_ECB = 5
VIRTIO_CRYPTO_CIPHER_DES_CBC = 6
VIRTIO_CRYPTO_CIPHER_3DES_ECB = 7
VIRTIO_CRYPTO_CIPHER_3DES_CBC = 8
VIRTIO_CRYPTO_CIPHER_3DES_CTR = 9
VIRTIO_CRYPTO_CIPHER_KASUMI_F8 = 10
VIRTIO_CRYPTO_CIPHER_SNOW3G_UEA2 = 11
VIRTIO_CRYPTO_CIPHER_AES_F8 = 12
VIRTIO_CRYPTO_CIPHER_AES_XTS = 13
VIRTIO_CRYPTO_CIPHER_ZUC_EEA3 = 14

VIRTIO_CRYPTO_OP_ENCRYPT = 1
VIRTIO_CRYPTO_OP_DECRYPT = 2


class virtio_crypto_cipher_session_para(_S):
    _fields_ = [
        ("algo", _le32),
        ("keylen", _le32),
        ("op", _le32),  # VIRTIO_CRYPTO_OP_*
        ("padding", _le32),
    ]


class virtio_crypto_session_input(_S):
    """Device-writable tail of a create-session request."""

    _fields_ = [
        ("session_id", _le64),
        ("status", _le32),
        ("padding", _le32),
    ]


class virtio_crypto_cipher_session_req(_S):
    _fields_ = [
        ("para", virtio_crypto_cipher_session_para),
        ("padding", _u8 * 32),
    ]


VIRTIO_CRYPTO_NO_HASH = 0
VIRTIO_CRYPTO_HASH_MD5 = 1
VIRTIO_CRYPTO_HASH_SHA1 = 2
VIRTIO_CRYPTO_HASH_SHA_224 = 3
VIRTIO_CRYPTO_HASH_SHA_256 = 4
VIRTIO_CRYPTO_HASH_SHA_384 = 5
VIRTIO_CRYPTO_HASH_SHA_512 = 6
VIRTIO_CRYPTO_HASH_SHA3_224 = 7
VIRTIO_CRYPTO_HASH_SHA3_256 = 8
VIRTIO_CRYPTO_HASH_SHA3_384 = 9
VIRTIO_CRYPTO_HASH_SHA3_512 = 10
VIRTIO_CRYPTO_HASH_SHA3_SHAKE128 = 11
VIRTIO_CRYPTO_HASH_SHA3_SHAKE256 = 12


class virtio_crypto_hash_session_para(_S):
    _fields_ = [
        ("algo", _le32),
        ("hash_result_len", _le32),
        ("padding", _u8 * 8),
    ]


class virtio_crypto_hash_create_session_req(_S):
    _fields_ = [
        ("para", virtio_crypto_hash_session_para),
        ("padding", _u8 * 40),
    ]


VIRTIO_CRYPTO_NO_MAC = 0
VIRTIO_CRYPTO_MAC_HMAC_MD5 = 1
VIRTIO_CRYPTO_MAC_HMAC_SHA1 = 2
VIRTIO_CRYPTO_MAC_HMAC_SHA_224 = 3
VIRTIO_CRYPTO_MAC_HMAC_SHA_256 = 4
VIRTIO_CRYPTO_MAC_HMAC_SHA_384 = 5
VIRTIO_CRYPTO_MAC_HMAC_SHA_512 = 6
VIRTIO_CRYPTO_MAC_CMAC_3DES = 25
VIRTIO_CRYPTO_MAC_CMAC_AES = 26
VIRTIO_CRYPTO_MAC_KASUMI_F9 = 27
VIRTIO_CRYPTO_MAC_SNOW3G_UIA2 = 28
VIRTIO_CRYPTO_MAC_GMAC_AES = 41
VIRTIO_CRYPTO_MAC_GMAC_TWOFISH = 42
VIRTIO_CRYPTO_MAC_CBCMAC_AES = 49
VIRTIO_CRYPTO_MAC_CBCMAC_KASUMI_F9 = 50
VIRTIO_CRYPTO_MAC_XCBC_AES = 53


class virtio_crypto_mac_session_para(_S):
    _fields_ = [
        ("algo", _le32),
        ("hash_result_len", _le32),
        ("auth_key_len", _le32),
        ("padding", _le32),
    ]


class virtio_crypto_mac_create_session_req(_S):
    _fields_ = [
        ("para", virtio_crypto_mac_session_para),
        ("padding", _u8 * 40),
    ]


VIRTIO_CRYPTO_NO_AEAD = 0
VIRTIO_CRYPTO_AEAD_GCM = 1
VIRTIO_CRYPTO_AEAD_CCM = 2
VIRTIO_CRYPTO_AEAD_CHACHA20_POLY1305 = 3


class virtio_crypto_aead_session_para(_S):
    _fields_ = [
        ("algo", _le32),
        ("key_len", _le32),
        ("hash_result_len", _le32),
        ("aad_len", _le32),
        ("op", _le32),
        ("padding", _le32),
    ]


class virtio_crypto_aead_create_session_req(_S):
    _fields_ = [
        ("para", virtio_crypto_aead_session_para),
        ("padding", _u8 * 32),
    ]


VIRTIO_CRYPTO_RSA_RAW_PADDING = 0
VIRTIO_CRYPTO_RSA_PKCS1_PADDING = 1
VIRTIO_CRYPTO_RSA_NO_HASH = 0
VIRTIO_CRYPTO_RSA_MD2 = 1
VIRTIO_CRYPTO_RSA_MD3 = 2
VIRTIO_CRYPTO_RSA_MD4 = 3
VIRTIO_CRYPTO_RSA_MD5 = 4
VIRTIO_CRYPTO_RSA_SHA1 = 5
VIRTIO_CRYPTO_RSA_SHA256 = 6
VIRTIO_CRYPTO_RSA_SHA384 = 7
VIRTIO_CRYPTO_RSA_SHA512 = 8
VIRTIO_CRYPTO_RSA_SHA224 = 9


class virtio_crypto_rsa_session_para(_S):
    _fields_ = [
        ("padding_algo", _le32),
        ("hash_algo", _le32),
    ]


VIRTIO_CRYPTO_CURVE_UNKNOWN = 0
VIRTIO_CRYPTO_CURVE_NIST_P192 = 1
VIRTIO_CRYPTO_CURVE_NIST_P224 = 2
VIRTIO_CRYPTO_CURVE_NIST_P256 = 3
VIRTIO_CRYPTO_CURVE_NIST_P384 = 4
VIRTIO_CRYPTO_CURVE_NIST_P521 = 5


class virtio_crypto_ecdsa_session_para(_S):
    _fields_ = [
        ("curve_id", _le32),
        ("padding", _le32),
    ]


VIRTIO_CRYPTO_NO_AKCIPHER = 0
VIRTIO_CRYPTO_AKCIPHER_RSA = 1
VIRTIO_CRYPTO_AKCIPHER_DSA = 2
VIRTIO_CRYPTO_AKCIPHER_ECDSA = 3
VIRTIO_CRYPTO_AKCIPHER_KEY_TYPE_PUBLIC = 1
VIRTIO_CRYPTO_AKCIPHER_KEY_TYPE_PRIVATE = 2


class _virtio_crypto_akcipher_session_para_u(_U):
    _fields_ = [
        ("rsa", virtio_crypto_rsa_session_para),
        ("ecdsa", virtio_crypto_ecdsa_session_para),
    ]


class virtio_crypto_akcipher_session_para(_S):
    _fields_ = [
        ("algo", _le32),
        ("keytype", _le32),
        ("keylen", _le32),
        ("u", _virtio_crypto_akcipher_session_para_u),
    ]


class virtio_crypto_akcipher_create_session_req(_S):
    _fields_ = [
        ("para", virtio_crypto_akcipher_session_para),
        ("padding", _u8 * 36),
    ]


VIRTIO_CRYPTO_SYM_ALG_CHAIN_ORDER_HASH_THEN_CIPHER = 1
VIRTIO_CRYPTO_SYM_ALG_CHAIN_ORDER_CIPHER_THEN_HASH = 2
VIRTIO_CRYPTO_SYM_HASH_MODE_PLAIN = 1
VIRTIO_CRYPTO_SYM_HASH_MODE_AUTH = 2
VIRTIO_CRYPTO_SYM_HASH_MODE_NESTED = 3


class _virtio_crypto_alg_chain_session_para_u(_U):
    _fields_ = [
        ("hash_param", virtio_crypto_hash_session_para),
        ("mac_param", virtio_crypto_mac_session_para),
        ("padding", _u8 * 16),
    ]


class virtio_crypto_alg_chain_session_para(_S):
    _fields_ = [
        ("alg_chain_order", _le32),
        ("hash_mode", _le32),
        ("cipher_param", virtio_crypto_cipher_session_para),
        ("u", _virtio_crypto_alg_chain_session_para_u),
        ("aad_len", _le32),
        ("padding", _le32),
    ]


class virtio_crypto_alg_chain_session_req(_S):
    _fields_ = [
        ("para", virtio_crypto_alg_chain_session_para),
    ]


VIRTIO_CRYPTO_SYM_OP_NONE = 0
VIRTIO_CRYPTO_SYM_OP_CIPHER = 1
VIRTIO_CRYPTO_SYM_OP_ALGORITHM_CHAINING = 2


class _virtio_crypto_sym_create_session_req_u(_U):
    _fields_ = [
        ("cipher", virtio_crypto_cipher_session_req),
        ("chain", virtio_crypto_alg_chain_session_req),
        ("padding", _u8 * 48),
    ]


class virtio_crypto_sym_create_session_req(_S):
    _fields_ = [
        ("u", _virtio_crypto_sym_create_session_req_u),
        ("op_type", _le32),  # VIRTIO_CRYPTO_SYM_OP_*
        ("padding", _le32),
    ]


class virtio_crypto_destroy_session_req(_S):
    _fields_ = [
        ("session_id", _le64),
        ("padding", _u8 * 48),
    ]


class _virtio_crypto_op_ctrl_req_u(_U):
    _fields_ = [
        ("sym_create_session", virtio_crypto_sym_create_session_req),
        ("hash_create_session", virtio_crypto_hash_create_session_req),
        ("mac_create_session", virtio_crypto_mac_create_session_req),
        ("aead_create_session", virtio_crypto_aead_create_session_req),
        ("akcipher_create_session", virtio_crypto_akcipher_create_session_req),
        ("destroy_session", virtio_crypto_destroy_session_req),
        ("padding", _u8 * 56),
    ]


class virtio_crypto_op_ctrl_req(_S):
    """Control queue request: 16-byte header + 56-byte union = 72 bytes."""

    _fields_ = [
        ("header", virtio_crypto_ctrl_header),
        ("u", _virtio_crypto_op_ctrl_req_u),
    ]


# data queue opcodes (virtio_crypto_op_header.opcode)
VIRTIO_CRYPTO_CIPHER_ENCRYPT = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_CIPHER, 0x00)
VIRTIO_CRYPTO_CIPHER_DECRYPT = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_CIPHER, 0x01)
VIRTIO_CRYPTO_HASH = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_HASH, 0x00)
VIRTIO_CRYPTO_MAC = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_MAC, 0x00)
VIRTIO_CRYPTO_AEAD_ENCRYPT = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_AEAD, 0x00)
VIRTIO_CRYPTO_AEAD_DECRYPT = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_AEAD, 0x01)
VIRTIO_CRYPTO_AKCIPHER_ENCRYPT = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_AKCIPHER, 0x00)
VIRTIO_CRYPTO_AKCIPHER_DECRYPT = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_AKCIPHER, 0x01)
VIRTIO_CRYPTO_AKCIPHER_SIGN = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_AKCIPHER, 0x02)
VIRTIO_CRYPTO_AKCIPHER_VERIFY = VIRTIO_CRYPTO_OPCODE(VIRTIO_CRYPTO_SERVICE_AKCIPHER, 0x03)


class virtio_crypto_op_header(_S):
    _fields_ = [
        ("opcode", _le32),
        ("algo", _le32),
        ("session_id", _le64),
        ("flag", _le32),
        ("padding", _le32),
    ]


class virtio_crypto_cipher_para(_S):
    _fields_ = [
        ("iv_len", _le32),
        ("src_data_len", _le32),
        ("dst_data_len", _le32),
        ("padding", _le32),
    ]


class virtio_crypto_hash_para(_S):
    _fields_ = [
        ("src_data_len", _le32),
        ("hash_result_len", _le32),
    ]


class virtio_crypto_mac_para(_S):
    _fields_ = [
        ("hash", virtio_crypto_hash_para),
    ]


class virtio_crypto_aead_para(_S):
    _fields_ = [
        ("iv_len", _le32),
        ("aad_len", _le32),
        ("src_data_len", _le32),
        ("dst_data_len", _le32),
    ]


class virtio_crypto_cipher_data_req(_S):
    _fields_ = [
        ("para", virtio_crypto_cipher_para),
        ("padding", _u8 * 24),
    ]


class virtio_crypto_hash_data_req(_S):
    _fields_ = [
        ("para", virtio_crypto_hash_para),
        ("padding", _u8 * 40),
    ]


class virtio_crypto_mac_data_req(_S):
    _fields_ = [
        ("para", virtio_crypto_mac_para),
        ("padding", _u8 * 40),
    ]


class virtio_crypto_alg_chain_data_para(_S):
    _fields_ = [
        ("iv_len", _le32),
        ("src_data_len", _le32),
        ("dst_data_len", _le32),
        ("cipher_start_src_offset", _le32),
        ("len_to_cipher", _le32),
        ("hash_start_src_offset", _le32),
        ("len_to_hash", _le32),
        ("aad_len", _le32),
        ("hash_result_len", _le32),
        ("reserved", _le32),
    ]


class virtio_crypto_alg_chain_data_req(_S):
    _fields_ = [
        ("para", virtio_crypto_alg_chain_data_para),
    ]


class _virtio_crypto_sym_data_req_u(_U):
    _fields_ = [
        ("cipher", virtio_crypto_cipher_data_req),
        ("chain", virtio_crypto_alg_chain_data_req),
        ("padding", _u8 * 40),
    ]


class virtio_crypto_sym_data_req(_S):
    _fields_ = [
        ("u", _virtio_crypto_sym_data_req_u),
        ("op_type", _le32),  # VIRTIO_CRYPTO_SYM_OP_*
        ("padding", _le32),
    ]


class virtio_crypto_aead_data_req(_S):
    _fields_ = [
        ("para", virtio_crypto_aead_para),
        ("padding", _u8 * 32),
    ]


class virtio_crypto_akcipher_para(_S):
    _fields_ = [
        ("src_data_len", _le32),
        ("dst_data_len", _le32),
    ]


class virtio_crypto_akcipher_data_req(_S):
    _fields_ = [
        ("para", virtio_crypto_akcipher_para),
        ("padding", _u8 * 40),
    ]


class _virtio_crypto_op_data_req_u(_U):
    _fields_ = [
        ("sym_req", virtio_crypto_sym_data_req),
        ("hash_req", virtio_crypto_hash_data_req),
        ("mac_req", virtio_crypto_mac_data_req),
        ("aead_req", virtio_crypto_aead_data_req),
        ("akcipher_req", virtio_crypto_akcipher_data_req),
        ("padding", _u8 * 48),
    ]


class virtio_crypto_op_data_req(_S):
    """Data queue request: 24-byte header + 48-byte union = 72 bytes."""

    _fields_ = [
        ("header", virtio_crypto_op_header),
        ("u", _virtio_crypto_op_data_req_u),
    ]


# status codes (session_input.status, inhdr.status)
VIRTIO_CRYPTO_OK = 0
VIRTIO_CRYPTO_ERR = 1
VIRTIO_CRYPTO_BADMSG = 2
VIRTIO_CRYPTO_NOTSUPP = 3
VIRTIO_CRYPTO_INVSESS = 4
VIRTIO_CRYPTO_NOSPC = 5
VIRTIO_CRYPTO_KEY_REJECTED = 6

# virtio_crypto_config.status
VIRTIO_CRYPTO_S_HW_READY = 1 << 0


class virtio_crypto_config(_S):
    """Device-specific configuration (the VIRTIO_PCI_CAP_DEVICE_CFG window)."""

    _fields_ = [
        ("status", _le32),
        ("max_dataqueues", _le32),
        ("crypto_services", _le32),  # bit mask of VIRTIO_CRYPTO_SERVICE_*
        ("cipher_algo_l", _le32),
        ("cipher_algo_h", _le32),
        ("hash_algo", _le32),
        ("mac_algo_l", _le32),
        ("mac_algo_h", _le32),
        ("aead_algo", _le32),
        ("max_cipher_key_len", _le32),
        ("max_auth_key_len", _le32),
        ("akcipher_algo", _le32),
        ("max_size", _le64),
    ]


class virtio_crypto_inhdr(_S):
    """Device-writable status byte ending every data request."""

    _fields_ = [
        ("status", _u8),
    ]
