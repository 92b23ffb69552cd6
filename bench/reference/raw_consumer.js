// The bench's reference for the raw queue: the least a consumer can do with its
// messages on Node's amqplib (a pure-JS AMQP client whose frame parsing the V8 JIT
// compiles), so its rate is about what RabbitMQ delivers on this machine.
//
// Usage: node raw_consumer.js AMQP_URL QUEUE MESSAGES PREFETCH ACK_EVERY
// Decodes every body as JSON, acks every ACK_EVERY messages with multiple=true (the
// raw consumer's batch ack), with the raw consumer's prefetch. Prints one JSON line:
// {"messages": n, "seconds": s, "rate": r}, timed from the first delivery to the last.
"use strict";

const amqp = require("amqplib");

async function main() {
  const [url, queue, total, prefetch, ackEvery] = process.argv.slice(2);
  const expected = Number(total);
  const connection = await amqp.connect(url);
  const channel = await connection.createChannel();
  await channel.prefetch(Number(prefetch));
  let seen = 0;
  let unacked = 0;
  let first = 0n;
  let last = 0n;
  await new Promise((resolve) => {
    channel.consume(
      queue,
      (message) => {
        if (seen === 0) first = process.hrtime.bigint();
        JSON.parse(message.content.toString("utf8"));
        seen += 1;
        unacked += 1;
        if (unacked >= Number(ackEvery) || seen === expected) {
          channel.ack(message, true);
          unacked = 0;
        }
        if (seen === expected) {
          last = process.hrtime.bigint();
          resolve();
        }
      },
      { noAck: false },
    );
  });
  const seconds = Number(last - first) / 1e9;
  // The first delivery starts the clock: n - 1 messages arrived in that time.
  console.log(JSON.stringify({ messages: seen, seconds, rate: (seen - 1) / seconds }));
  await channel.close();
  await connection.close();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
