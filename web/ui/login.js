// login.js — the login form of tern serve's web UI: posts {"user","password"} to /ui/login
// and goes to the UI on success. Owns only the form; never stores the password anywhere.
'use strict';
document.addEventListener('DOMContentLoaded', () => {
	const form = document.getElementById('login-form');
	const err = document.getElementById('login-error');
	form.addEventListener('submit', async (ev) => {
		ev.preventDefault();
		err.hidden = true;
		const btn = document.getElementById('login-submit');
		btn.disabled = true;
		try {
			const r = await fetch('/ui/login', {
				method: 'POST',
				credentials: 'same-origin',
				headers: { 'Content-Type': 'application/json' },
				body: JSON.stringify({
					user: document.getElementById('login-user').value,
					password: document.getElementById('login-password').value,
				}),
			});
			if (r.ok) {
				location.href = '/ui/';
				return;
			}
			let msg = `login failed (${r.status})`;
			try { msg = (await r.json()).error.message || msg; } catch (e) { /* keep */ }
			err.textContent = msg;
			err.hidden = false;
		} catch (e) {
			err.textContent = 'the server cannot be reached';
			err.hidden = false;
		} finally {
			btn.disabled = false;
		}
	});
});
