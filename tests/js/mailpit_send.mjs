// mailpit_send.mjs — sends one message with the npm `mailpit-api` client's sendMessage
// (Mailpit's POST /api/v1/send), as an application would, against tern serve or tern capture.
// Usage: node mailpit_send.mjs BASE_URL [TOKEN] — TOKEN goes as the password of Basic auth
// (the only auth the client knows; tern serve takes the API key there). Prints the client's
// answer as one JSON line; on an error prints "ERROR <message>" and exits 1.
import { MailpitClient } from "mailpit-api";

const [base, token] = process.argv.slice(2);
const client = new MailpitClient(base, token ? { auth: { username: "app", password: token } } : {});
try {
	const res = await client.sendMessage({
		From: { Email: "app@example.test", Name: "The App" },
		To: [{ Email: "alice@example.test", Name: "Alice" }],
		Subject: "sent with mailpit-api",
		Text: "plain part from node\n",
		HTML: "<p>html part from <b>node</b></p>",
		Attachments: [{ Content: Buffer.from("attached from node\n").toString("base64"), Filename: "note.txt" }],
		Tags: ["js-client"],
	});
	console.log(JSON.stringify(res));
} catch (e) {
	console.log("ERROR " + (e instanceof Error ? e.message : String(e)));
	process.exit(1);
}
