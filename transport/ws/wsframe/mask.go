package wsframe

import "encoding/binary"

// maskCopy sets dst[i] = src[i] ^ key[(pos+i)%4] for every i < len(src)
// (RFC 6455 §5.3): it copies and unmasks in one pass. pos is the offset of
// src[0] in the frame's payload. len(dst) must be at least len(src).
func maskCopy(dst, src []byte, key [maskKeyLen]byte, pos int) {
	dst = dst[:len(src)]
	i := 0
	if len(src) >= 8 {
		// Eight bytes at a time: the key rotated so that its byte j applies
		// to payload offset pos+j, repeated twice in a little-endian word.
		k := uint64(key[pos&3]) | uint64(key[(pos+1)&3])<<8 |
			uint64(key[(pos+2)&3])<<16 | uint64(key[(pos+3)&3])<<24
		k |= k << 32
		for ; i+8 <= len(src); i += 8 {
			binary.LittleEndian.PutUint64(dst[i:], binary.LittleEndian.Uint64(src[i:])^k)
		}
	}
	for ; i < len(src); i++ {
		dst[i] = src[i] ^ key[(pos+i)&3]
	}
}
