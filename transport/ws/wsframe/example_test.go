package wsframe_test

import (
	"fmt"

	"github.com/heraldhq/herald/transport/ws/wsframe"
)

// A connection's reader passes whatever each non-blocking read returned to
// Decode and acts on every message; a protocol error gives the close frame
// to send.
func ExampleDecoder() {
	d := wsframe.NewDecoder(wsframe.Config{MaxMessageBytes: 4096, RejectBinary: true})
	// Two reads: a masked "Hello" cut inside its header, then a ping and an
	// unmasked frame.
	reads := [][]byte{
		{0x81, 0x85, 0x37},
		{0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58, 0x89, 0x80, 1, 2, 3, 4, 0x81, 0x00},
	}
	var out []byte // what the writer would send
	for _, p := range reads {
		for len(p) > 0 {
			n, m, ok, err := d.Decode(p)
			p = p[n:]
			if err != nil {
				e := err.(*wsframe.Error)
				out = wsframe.AppendClose(out, e.Code, e.Reason)
				fmt.Println("close:", e.Code, e.Reason)
				break
			}
			if !ok {
				continue
			}
			switch m.Op {
			case wsframe.OpText:
				fmt.Printf("text: %s\n", m.Payload)
			case wsframe.OpPing:
				out = wsframe.AppendPong(out, m.Payload)
				fmt.Println("ping")
			}
		}
	}
	d.Release() // idle: the buffer goes back to the pool
	fmt.Printf("reply: % x\n", out)
	// Output:
	// text: Hello
	// ping
	// close: 1002 unmasked client frame
	// reply: 8a 00 88 17 03 ea 75 6e 6d 61 73 6b 65 64 20 63 6c 69 65 6e 74 20 66 72 61 6d 65
}
