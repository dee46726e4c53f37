// Starts kinesalite (a Kinesis emulator) on 127.0.0.1 only, because its own command line
// binds every interface. Usage: node kinesalite.js PORT   (0 picks a free port)
// Prints "kinesalite listening on http://127.0.0.1:PORT" once it accepts connections.
'use strict';

const path = require('path');

const modulePath = path.resolve(__dirname, '..', '..', '.tools', 'node', 'node_modules', 'kinesalite');
const port = Number.parseInt(process.argv[2] || '0', 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid port ${JSON.stringify(process.argv[2])}: expected an integer from 0 to 65535`);
  process.exit(2);
}

// Short state transitions keep tests fast. kinesalite's defaults are 500 ms.
const server = require(modulePath)({
  createStreamMs: 50,
  deleteStreamMs: 50,
  updateStreamMs: 50,
});

server.on('error', (error) => {
  console.error(`kinesalite failed to listen on 127.0.0.1:${port}: ${error.message}`);
  process.exit(1);
});

server.listen(port, '127.0.0.1', () => {
  console.log(`kinesalite listening on http://127.0.0.1:${server.address().port}`);
});

// Exit at once: server.close() would wait for idle keep-alive connections from clients.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
