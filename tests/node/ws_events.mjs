// ws_events.mjs — a Mailpit-style integration's WebSocket client (the `ws` package from npm)
// against tern capture's /api/events. Prints "READY" once the first event (stats) arrived,
// then one line per event as JSON, and exits 0 after the first "new" event, or 1 on error,
// close or the time limit. Usage: node ws_events.mjs ws://127.0.0.1:PORT/api/events
// Never: connects anywhere but the URL it was given.
import WebSocket from 'ws';

const url = process.argv[2];
const limit = setTimeout(() => { console.log('TIMEOUT'); process.exit(1); }, 20000);
const ws = new WebSocket(url);
let ready = false;
ws.on('message', (data) => {
	const ev = JSON.parse(data.toString());
	console.log(JSON.stringify(ev));
	if (!ready) {
		ready = true;
		console.log('READY');
	}
	if (ev.Type === 'new') {
		clearTimeout(limit);
		ws.close(1000);
	}
});
ws.on('close', (code) => {
	console.log(`CLOSED ${code}`);
	process.exit(code === 1000 || code === 1005 ? 0 : 1);
});
ws.on('error', (e) => { console.log(`ERROR ${e.message}`); process.exit(1); });
