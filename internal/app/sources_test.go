package app

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"

	"github.com/heraldhq/herald/internal/config"
	"github.com/heraldhq/herald/internal/testutil"
)

// TestSources: an application writes events into its own queues — a Redis
// stream, a NATS JetStream stream and a RabbitMQ exchange, each on a real
// server — and
// Herald's pipelines reading them publish to subscribers. A malformed
// entry is dead-lettered with the reason.
func TestSources(t *testing.T) {
	redisAddr, _ := testutil.Redis(t)
	amqpURL, _ := testutil.RabbitMQ(t)
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}

	r := startApp(t, config.Config{
		Sources: []config.SourceConfig{
			{Name: "legacy", Type: "redis", URL: "redis://" + redisAddr, Prefix: "shop:events"},
			{Name: "bus", Type: "jetstream", URL: ns.ClientURL(), Prefix: "shop"},
			{Name: "rabbit", Type: "rabbitmq", URL: amqpURL, Prefix: "shop"},
		},
		Pipelines: []config.PipelineConfig{
			{Name: "from-redis", Source: "legacy"},
			{Name: "from-nats", Source: "bus"},
			{Name: "from-rabbit", Source: "rabbit"},
		},
	})
	sub := sseData(t, r.url, "thread:r1", "thread:n1", "thread:a1")
	testutil.Eventually(t, 5*time.Second, func() error {
		if r.app.Hub().Stats().Connections != 1 {
			return context.DeadlineExceeded
		}
		return nil
	})

	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	for _, ev := range []string{
		`{"id":"r-1","type":"post.created","data":{"id":"pr1","thread":"r1","forum":"f","author":{"id":"u","email":"x@example.com"},"message":"from redis"}}`,
		`not an event`,
	} {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: "shop:events", Values: map[string]any{"event": ev}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Publish("shop.events.all", []byte(`{"id":"n-1","type":"post.created","data":{"id":"pn1","thread":"n1","forum":"f","author":{"id":"u"},"message":"from nats"}}`)); err != nil {
		t.Fatal(err)
	}

	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.PublishWithContext(ctx, "shop.events", "", false, false, amqp.Publishing{
		DeliveryMode: amqp.Persistent, ContentType: "application/json",
		Body: []byte(`{"id":"a-1","type":"post.created","data":{"id":"pa1","thread":"a1","forum":"f","author":{"id":"u"},"message":"from rabbitmq"}}`),
	}); err != nil {
		t.Fatal(err)
	}

	got := map[string]bool{}
	deadline := time.After(10 * time.Second)
	for len(got) < 3 {
		select {
		case d := <-sub:
			var env struct {
				Data map[string]any `json:"data"`
			}
			_ = json.Unmarshal([]byte(d), &env)
			if strings.Contains(d, "x@example.com") {
				t.Fatalf("e-mail published: %s", d)
			}
			got[env.Data["message"].(string)] = true
		case <-deadline:
			t.Fatalf("got %v, want both sources' events", got)
		}
	}
	// The malformed entry is in from-redis's dead letters, with the reason.
	testutil.Eventually(t, 10*time.Second, func() error {
		dl, _ := r.app.events.deadLetters("from-redis")
		list, err := dl.List(ctx, 10)
		if err != nil {
			return err
		}
		if len(list) != 1 || !strings.Contains(list[0].Error, "parse") {
			return context.DeadlineExceeded
		}
		return nil
	})
}
