/*
 * test_tls.c — src/tls/: RFC 6125 name matching (wildcards as one whole
 * label), the config's certificates turned into contexts and chosen by SNI
 * (SAN first, CN only without a SAN, exact before wildcard, the first as
 * default) through real in-memory handshakes, TLS 1.1 refused, a reload that
 * fails keeping the certificates in use and one that succeeds leaving
 * established sessions working, the self-signed certificate (made, kept,
 * made again when expired, renamed or mismatched), the client context with
 * and without a CA file, and the log words.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/conf.h"
#include "core/err.h"
#include "tls/tls.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* ---- name matching -------------------------------------------------------- */

static void test_name_match(void **state)
{
	static const struct {
		const char *pattern, *host;
		bool match;
	} cases[] = {
	    {"mx.example.com", "mx.example.com", true},
	    {"MX.Example.COM", "mx.example.com", true}, /* case-insensitive */
	    {"mx.example.com", "MX.EXAMPLE.COM", true},
	    {"mx.example.com.", "mx.example.com", true}, /* one trailing dot ignored */
	    {"mx.example.com", "mx.example.com.", true},
	    {"mx.example.com", "mx.example.co", false},
	    {"mx.example.com", "mx.example.com.au", false},
	    {"mx.example.com", "xmx.example.com", false},
	    {"*.example.com", "mx.example.com", true}, /* one label */
	    {"*.Example.com", "A-1.example.COM", true},
	    {"*.example.com", "example.com", false},     /* not zero labels */
	    {"*.example.com", "a.b.example.com", false}, /* not two */
	    {"*.example.com", ".example.com", false},    /* not an empty one */
	    {"*.example.com", "mx.example.org", false},
	    {"*.com", "example.com", false}, /* never a whole TLD */
	    {"*", "localhost", false},
	    {"*.", "localhost", false},
	    {"f*.example.com", "foo.example.com", false}, /* partial labels: not honoured */
	    {"*oo.example.com", "foo.example.com", false},
	    {"mx.*.example.com", "mx.a.example.com", false}, /* only the left-most label */
	    {"*.*.example.com", "a.b.example.com", false},
	    {"**.example.com", "a.example.com", false},
	    {"*.xn--bcher-kva.example", "mx.xn--bcher-kva.example", true},
	    {"*.example.com", "*.example.com", false}, /* a host is never a pattern */
	    {"mx.example.com", "", false},
	    {"", "mx.example.com", false},
	    {"*.example..com", "a.example..com", false},
	    {"a..b", "a..b", false},
	};
	for (size_t i = 0; i < N(cases); i++) {
		bool got = tls_name_match(cases[i].pattern, strlen(cases[i].pattern), cases[i].host,
		                          strlen(cases[i].host));
		if (got != cases[i].match)
			fail_msg("case %zu: '%s' vs '%s': got %d", i, cases[i].pattern,
			         cases[i].host, got);
	}
	/* lengths are the truth: nothing past them is read */
	assert_true(tls_name_match("mx.example.comXX", 14, "mx.example.com", 14));
	assert_false(tls_name_match("mx.example.com", 14, "mx.example.com\0x", 16));
	assert_false(tls_name_match(NULL, 0, "a", 1));
}

/* ---- test certificates ---------------------------------------------------- */

static char tmpdir[64];

static int setup_dir(void **state)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/tern-tls-XXXXXX");
	assert_non_null(mkdtemp(tmpdir));
	return 0;
}

static int remove_dir(void **state)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	assert_int_equal(system(cmd), 0);
	return 0;
}

static void write_file(const char *path, const char *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

static char *path_in(const char *name)
{
	static char bufs[8][256];
	static int k;
	char *p = bufs[k++ % 8];
	snprintf(p, 256, "%s/%s", tmpdir, name);
	return p;
}

/*
 * A self-signed certificate with subject CN=cn and, if san is not NULL, that
 * subjectAltName (OpenSSL syntax, "DNS:a,DNS:b"), written as DIR/base.pem and
 * DIR/base.key.
 */
static void make_cert(const char *base, const char *cn, const char *san)
{
	EVP_PKEY *pk = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	assert_non_null(pk);
	assert_non_null(x);
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), -60);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_NAME *name = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
	X509_set_issuer_name(x, name);
	X509_set_pubkey(x, pk);
	if (san) {
		X509V3_CTX v3;
		X509V3_set_ctx_nodb(&v3);
		X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
		X509_EXTENSION *ex = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
		assert_non_null(ex);
		X509_add_ext(x, ex, -1);
		X509_EXTENSION_free(ex);
	}
	assert_true(X509_sign(x, pk, EVP_sha256()) > 0);
	char file[64];
	snprintf(file, sizeof(file), "%s.pem", base);
	FILE *f = fopen(path_in(file), "w");
	assert_non_null(f);
	PEM_write_X509(f, x);
	fclose(f);
	snprintf(file, sizeof(file), "%s.key", base);
	f = fopen(path_in(file), "w");
	assert_non_null(f);
	PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL);
	fclose(f);
	X509_free(x);
	EVP_PKEY_free(pk);
}

/* A conf_tls_server over DIR/base.pem + DIR/base.key for each base. */
struct certs {
	struct conf_tls_cert v[8];
	char files[8][2][256];
	struct conf_tls_server t;
};

static void certs_of(struct certs *c, const char *const *bases, size_t n)
{
	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < n; i++) {
		snprintf(c->files[i][0], 256, "%s/%s.pem", tmpdir, bases[i]);
		snprintf(c->files[i][1], 256, "%s/%s.key", tmpdir, bases[i]);
		c->v[i].cert_file = c->files[i][0];
		c->v[i].key_file = c->files[i][1];
	}
	c->t.certs = c->v;
	c->t.n_certs = n;
}

/* ---- handshakes in memory -------------------------------------------------- */

/* Runs both ends until done; 0, or -1 if either failed. */
static int handshake(SSL *c, SSL *s)
{
	for (int i = 0; i < 50; i++) {
		int rc = SSL_do_handshake(c), rs = SSL_do_handshake(s);
		if (rc == 1 && rs == 1)
			return 0;
		int ec = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(c, rc);
		int es = rs == 1 ? SSL_ERROR_NONE : SSL_get_error(s, rs);
		if ((ec != SSL_ERROR_NONE && ec != SSL_ERROR_WANT_READ &&
		     ec != SSL_ERROR_WANT_WRITE) ||
		    (es != SSL_ERROR_NONE && es != SSL_ERROR_WANT_READ &&
		     es != SSL_ERROR_WANT_WRITE))
			return -1;
	}
	return -1;
}

struct conn {
	SSL *c, *s;
};

static unsigned long last_error; /* of the last connect_to */

/* A client (max_version 0: any) asking for sni connects to the server. */
static int connect_to(SSL_CTX *server, SSL_CTX *client, const char *sni, int max_version,
                      struct conn *out)
{
	BIO *bc, *bs;
	assert_int_equal(BIO_new_bio_pair(&bc, 0, &bs, 0), 1);
	out->c = SSL_new(client);
	out->s = SSL_new(server);
	assert_non_null(out->c);
	assert_non_null(out->s);
	SSL_set_bio(out->c, bc, bc);
	SSL_set_bio(out->s, bs, bs);
	SSL_set_connect_state(out->c);
	SSL_set_accept_state(out->s);
	if (sni)
		SSL_set_tlsext_host_name(out->c, sni);
	if (max_version)
		SSL_set_max_proto_version(out->c, max_version);
	int rc = handshake(out->c, out->s);
	last_error = ERR_peek_last_error();
	ERR_clear_error();
	return rc;
}

static void conn_free(struct conn *k)
{
	SSL_free(k->c);
	SSL_free(k->s);
}

/* The CN of the certificate the client got. */
static void peer_cn(struct conn *k, char *cn, size_t len)
{
	X509 *x = SSL_get1_peer_certificate(k->c);
	assert_non_null(x);
	assert_true(
	    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, (int)len) > 0);
	X509_free(x);
}

static SSL_CTX *any_client(void)
{
	char err[256];
	SSL_CTX *c = tls_client_ctx_new(NULL, false, err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	return c;
}

/* What a client asking for sni is given: the CN, "" when the handshake
 * failed. */
static void served(struct tls_server *ts, const char *sni, char *cn, size_t len)
{
	SSL_CTX *cc = any_client();
	struct conn k;
	cn[0] = '\0';
	if (connect_to(tls_server_ctx(ts), cc, sni, 0, &k) == 0)
		peer_cn(&k, cn, len);
	conn_free(&k);
	SSL_CTX_free(cc);
}

/* ---- config -> contexts, SNI ---------------------------------------------- */

static void test_sni_picks_certificate(void **state)
{
	char err[512], cn[128], file[256];
	make_cert("default", "default.test", "DNS:default.test,DNS:localhost");
	make_cert("wild", "wild-cn", "DNS:*.example.test");
	make_cert("exact", "exact-cn", "DNS:mx.example.test,DNS:mail.other.test");
	make_cert("cnonly", "legacy.test", NULL);
	/* a SAN without this name: its CN must not count */
	make_cert("cnignored", "ignored.test", "DNS:san.only.test");
	static const char *const bases[] = {"default", "wild", "exact", "cnonly", "cnignored"};
	struct certs c;
	certs_of(&c, bases, N(bases));
	struct tls_server *ts = tls_server_new(&c.t, err, sizeof(err));
	if (!ts)
		fail_msg("%s", err);
	assert_int_equal(tls_server_count(ts), 5);

	static const struct {
		const char *sni;
		size_t want;
		const char *cn;
	} cases[] = {
	    {NULL, 0, "default.test"},           /* no SNI: the first */
	    {"unknown.test", 0, "default.test"}, /* no certificate names it */
	    {"localhost", 0, "default.test"},
	    {"MX.Example.Test", 2, "exact-cn"}, /* exact beats the earlier wildcard */
	    {"mail.other.test", 2, "exact-cn"},
	    {"www.example.test", 1, "wild-cn"},      /* wildcard, one label */
	    {"a.b.example.test", 0, "default.test"}, /* not two labels */
	    {"example.test", 0, "default.test"},
	    {"legacy.test", 3, "legacy.test"},   /* CN, since that one has no SAN */
	    {"ignored.test", 0, "default.test"}, /* CN ignored beside a SAN */
	    {"san.only.test", 4, "ignored.test"},
	};
	for (size_t i = 0; i < N(cases); i++) {
		size_t got = tls_server_pick(ts, cases[i].sni, file, sizeof(file));
		if (got != cases[i].want)
			fail_msg("case %zu (%s): picked %zu, want %zu", i,
			         cases[i].sni ? cases[i].sni : "no SNI", got, cases[i].want);
		assert_string_equal(file, c.v[cases[i].want].cert_file);
		/* and a real handshake gets that certificate */
		served(ts, cases[i].sni, cn, sizeof(cn));
		if (strcmp(cn, cases[i].cn) != 0)
			fail_msg("case %zu (%s): served '%s', want '%s'", i,
			         cases[i].sni ? cases[i].sni : "no SNI", cn, cases[i].cn);
	}
	tls_server_free(ts);
}

static void test_protocol_floor_and_log_words(void **state)
{
	char err[512], d[256];
	make_cert("floor", "floor.test", "DNS:floor.test");
	static const char *const bases[] = {"floor"};
	struct certs c;
	certs_of(&c, bases, 1);
	struct tls_server *ts = tls_server_new(&c.t, err, sizeof(err));
	if (!ts)
		fail_msg("%s", err);
	/* A client that goes no higher than TLS 1.1 (with the ciphers that
	 * needs) is refused by the server, not by itself. */
	SSL_CTX *old = SSL_CTX_new(TLS_client_method());
	SSL_CTX_set_security_level(old, 0);
	SSL_CTX_set_min_proto_version(old, TLS1_VERSION);
	SSL_CTX_set_cipher_list(old, "DEFAULT:@SECLEVEL=0");
	struct conn k;
	assert_int_equal(connect_to(tls_server_ctx(ts), old, "floor.test", TLS1_1_VERSION, &k), -1);
	assert_int_equal(SSL_client_version(k.s), TLS1_1_VERSION); /* it got a 1.1 hello */
	assert_false(SSL_is_init_finished(k.s));
	/* and for its version, not because of the security level (a 1.0
	 * floor with OpenSSL 3's level would fail for its signatures) */
	assert_int_equal(ERR_GET_REASON(last_error), SSL_R_UNSUPPORTED_PROTOCOL);
	conn_free(&k);
	/* TLS 1.2 and 1.3 are fine */
	assert_int_equal(connect_to(tls_server_ctx(ts), old, "floor.test", TLS1_2_VERSION, &k), 0);
	assert_int_equal(SSL_version(k.s), TLS1_2_VERSION);
	tls_describe(k.s, d, sizeof(d));
	assert_non_null(strstr(d, "tls=TLSv1.2 cipher="));
	assert_non_null(strstr(d, " sni=floor.test"));
	conn_free(&k);
	assert_int_equal(connect_to(tls_server_ctx(ts), old, NULL, 0, &k), 0);
	tls_describe(k.s, d, sizeof(d));
	assert_string_equal(d, "tls=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384");
	tls_describe(k.c, d, sizeof(d)); /* outbound: the same words */
	assert_string_equal(d, "tls=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384");
	conn_free(&k);
	SSL_CTX_free(old);
	/* a name from the network cannot forge fields */
	SSL_CTX *cc = any_client();
	assert_int_equal(connect_to(tls_server_ctx(ts), cc, "a b=c\" x=y", 0, &k), 0);
	tls_describe(k.s, d, sizeof(d));
	if (!strstr(d, " sni=\"a b=c\\x22 x=y\""))
		fail_msg("%s", d);
	conn_free(&k);
	SSL_CTX_free(cc);
	tls_describe(NULL, d, sizeof(d));
	assert_string_equal(d, "tls=? cipher=?");
	tls_server_free(ts);
}

static void test_load_errors(void **state)
{
	char err[512];
	make_cert("one", "one.test", "DNS:one.test");
	make_cert("two", "two.test", "DNS:two.test");
	struct certs c;
	static const char *const bases[] = {"one"};
	certs_of(&c, bases, 1);
	/* no certificate at all */
	struct conf_tls_server none = {0};
	assert_null(tls_server_new(&none, err, sizeof(err)));
	assert_string_equal(err, "tls: no certificate is configured");
	/* a missing file */
	c.v[0].cert_file = path_in("nope.pem");
	assert_null(tls_server_new(&c.t, err, sizeof(err)));
	assert_non_null(strstr(err, "tls: cannot read cert_file"));
	assert_non_null(strstr(err, "No such file"));
	/* a key that is another certificate's */
	c.v[0].cert_file = c.files[0][0];
	c.v[0].key_file = path_in("two.key");
	assert_null(tls_server_new(&c.t, err, sizeof(err)));
	assert_non_null(strstr(err, "tls: cannot load"));
	assert_non_null(strstr(err, "values mismatch"));
	/* not PEM */
	write_file(path_in("junk.pem"), "junk\n", 5);
	c.v[0].cert_file = path_in("junk.pem");
	c.v[0].key_file = c.files[0][1];
	assert_null(tls_server_new(&c.t, err, sizeof(err)));
	assert_non_null(strstr(err, "tls: cannot load"));
	/* an encrypted key is refused, not prompted for */
	EVP_PKEY *pk = EVP_EC_gen("P-256");
	FILE *f = fopen(path_in("enc.key"), "w");
	PEM_write_PKCS8PrivateKey(f, pk, EVP_aes_128_cbc(), NULL, 0, NULL, (void *)"pw");
	fclose(f);
	EVP_PKEY_free(pk);
	c.v[0].cert_file = c.files[0][0];
	c.v[0].key_file = path_in("enc.key");
	assert_null(tls_server_new(&c.t, err, sizeof(err)));
	assert_non_null(strstr(err, "tls: cannot load"));
	ERR_clear_error();
}

/* ---- reload ---------------------------------------------------------------- */

static void test_reload(void **state)
{
	char err[512], cn[128];
	make_cert("old", "old.test", "DNS:old.test");
	make_cert("new", "new.test", "DNS:new.test");
	make_cert("other", "other.test", "DNS:other.test");
	struct certs c;
	static const char *const olds[] = {"old"};
	certs_of(&c, olds, 1);
	struct tls_server *ts = tls_server_new(&c.t, err, sizeof(err));
	if (!ts)
		fail_msg("%s", err);
	SSL_CTX *cc = any_client();
	struct conn before;
	assert_int_equal(connect_to(tls_server_ctx(ts), cc, NULL, 0, &before), 0);
	peer_cn(&before, cn, sizeof(cn));
	assert_string_equal(cn, "old.test");

	/* A reload that fails (a key of another certificate) keeps the old set. */
	struct certs bad;
	static const char *const news[] = {"new"};
	certs_of(&bad, news, 1);
	bad.v[0].key_file = path_in("other.key");
	assert_int_equal(tls_server_reload(ts, &bad.t, err, sizeof(err)), TERN_EINVAL);
	assert_non_null(strstr(err, "tls: cannot load"));
	served(ts, NULL, cn, sizeof(cn));
	assert_string_equal(cn, "old.test");
	struct conf_tls_server empty = {0};
	assert_int_equal(tls_server_reload(ts, &empty, err, sizeof(err)), TERN_EINVAL);
	served(ts, NULL, cn, sizeof(cn));
	assert_string_equal(cn, "old.test");

	/* One that works: new handshakes get the new certificate ... */
	struct certs good;
	static const char *const two[] = {"new", "other"};
	certs_of(&good, two, 2);
	assert_int_equal(tls_server_reload(ts, &good.t, err, sizeof(err)), TERN_OK);
	assert_int_equal(tls_server_count(ts), 2);
	served(ts, NULL, cn, sizeof(cn));
	assert_string_equal(cn, "new.test");
	served(ts, "other.test", cn, sizeof(cn));
	assert_string_equal(cn, "other.test");
	/* ... and the session made before still carries data both ways (its
	 * context outlived the set that held it). */
	char buf[16];
	assert_int_equal(SSL_write(before.c, "ping", 4), 4);
	assert_int_equal(SSL_read(before.s, buf, sizeof(buf)), 4);
	assert_memory_equal(buf, "ping", 4);
	assert_int_equal(SSL_write(before.s, "pong", 4), 4);
	assert_int_equal(SSL_read(before.c, buf, sizeof(buf)), 4);
	assert_memory_equal(buf, "pong", 4);
	/* and it even outlives the server */
	struct conn mid;
	assert_int_equal(connect_to(tls_server_ctx(ts), cc, NULL, 0, &mid), 0);
	tls_server_free(ts);
	assert_int_equal(SSL_write(mid.c, "late", 4), 4);
	assert_int_equal(SSL_read(mid.s, buf, sizeof(buf)), 4);
	conn_free(&mid);
	conn_free(&before);
	SSL_CTX_free(cc);
}

/* ---- the self-signed certificate ------------------------------------------ */

static X509 *read_cert(const char *path)
{
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(x);
	return x;
}

static void test_self_signed(void **state)
{
	char err[512], why[64];
	bool made = false;
	char cert[256], key[256];
	snprintf(cert, sizeof(cert), "%s", path_in("dd/tls/selfsigned-cert.pem"));
	snprintf(key, sizeof(key), "%s", path_in("dd/tls/selfsigned-key.pem"));
	/* first start: made, key 0600, directory 0700 */
	assert_int_equal(tls_self_signed_ensure(cert, key, "mx.example.test", (uid_t)-1, (gid_t)-1,
	                                        &made, why, sizeof(why), err, sizeof(err)),
	                 TERN_OK);
	assert_true(made);
	assert_string_equal(why, "missing");
	struct stat st;
	assert_int_equal(stat(key, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(stat(path_in("dd/tls"), &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
	X509 *x = read_cert(cert);
	/* SAN: the host name, localhost, 127.0.0.1 (and ::1) */
	assert_int_equal(X509_check_host(x, "mx.example.test", 0, 0, NULL), 1);
	assert_int_equal(X509_check_host(x, "localhost", 0, 0, NULL), 1);
	assert_int_equal(X509_check_ip_asc(x, "127.0.0.1", 0), 1);
	assert_int_equal(X509_check_ip_asc(x, "::1", 0), 1);
	assert_int_equal(X509_check_host(x, "other.test", 0, 0, NULL), 0);
	assert_true(X509_cmp_time(X509_get0_notAfter(x), NULL) > 0);
	unsigned char *der = NULL;
	int derlen = i2d_X509(x, &der);
	X509_free(x);

	/* later starts: kept as it is */
	assert_int_equal(tls_self_signed_ensure(cert, key, "mx.example.test", (uid_t)-1, (gid_t)-1,
	                                        &made, why, sizeof(why), err, sizeof(err)),
	                 TERN_OK);
	assert_false(made);
	x = read_cert(cert);
	unsigned char *der2 = NULL;
	assert_int_equal(i2d_X509(x, &der2), derlen);
	assert_memory_equal(der, der2, (size_t)derlen);
	X509_free(x);
	OPENSSL_free(der2);
	OPENSSL_free(der);

	/* and it serves: a context loads it, a client trusting it verifies */
	struct conf_tls_cert one = {cert, key};
	struct conf_tls_server t = {.certs = &one, .n_certs = 1, .self_signed = true};
	struct tls_server *ts = tls_server_new(&t, err, sizeof(err));
	if (!ts)
		fail_msg("%s", err);
	SSL_CTX *vc = tls_client_ctx_new(cert, true, err, sizeof(err));
	if (!vc)
		fail_msg("%s", err);
	struct conn k;
	BIO *bc, *bs;
	assert_int_equal(BIO_new_bio_pair(&bc, 0, &bs, 0), 1);
	k.c = SSL_new(vc);
	k.s = SSL_new(tls_server_ctx(ts));
	SSL_set_bio(k.c, bc, bc);
	SSL_set_bio(k.s, bs, bs);
	SSL_set_connect_state(k.c);
	SSL_set_accept_state(k.s);
	SSL_set_tlsext_host_name(k.c, "localhost");
	assert_int_equal(SSL_set1_host(k.c, "localhost"), 1);
	assert_int_equal(handshake(k.c, k.s), 0);
	assert_int_equal(SSL_get_verify_result(k.c), X509_V_OK);
	conn_free(&k);
	SSL_CTX_free(vc);
	tls_server_free(ts);

	/* a certificate for another CA does not verify it */
	make_cert("stranger", "stranger.test", "DNS:localhost");
	vc = tls_client_ctx_new(path_in("stranger.pem"), true, err, sizeof(err));
	assert_non_null(vc);
	ts = tls_server_new(&t, err, sizeof(err));
	assert_non_null(ts);
	assert_int_equal(connect_to(tls_server_ctx(ts), vc, "localhost", 0, &k), -1);
	conn_free(&k);
	SSL_CTX_free(vc);
	tls_server_free(ts);

	/* made again: the host name changed, ... */
	assert_int_equal(tls_self_signed_ensure(cert, key, "other.test", (uid_t)-1, (gid_t)-1,
	                                        &made, why, sizeof(why), err, sizeof(err)),
	                 TERN_OK);
	assert_true(made);
	assert_string_equal(why, "hostname-changed");
	x = read_cert(cert);
	assert_int_equal(X509_check_host(x, "other.test", 0, 0, NULL), 1);
	X509_free(x);
	/* ... it expired, ... */
	char *pem, *kpem;
	size_t plen, klen;
	assert_int_equal(tls_self_signed_make("other.test", 1, -2 * 86400, &pem, &plen, &kpem,
	                                      &klen, err, sizeof(err)),
	                 TERN_OK);
	write_file(cert, pem, plen);
	write_file(key, kpem, klen);
	free(pem);
	free(kpem);
	assert_int_equal(tls_self_signed_ensure(cert, key, "other.test", (uid_t)-1, (gid_t)-1,
	                                        &made, why, sizeof(why), err, sizeof(err)),
	                 TERN_OK);
	assert_true(made);
	assert_string_equal(why, "expired");
	x = read_cert(cert);
	assert_true(X509_cmp_time(X509_get0_notAfter(x), NULL) > 0);
	X509_free(x);
	/* ... its key is not its own (a crash between the two writes) */
	write_file(key, "", 0);
	assert_int_equal(tls_self_signed_ensure(cert, key, "other.test", (uid_t)-1, (gid_t)-1,
	                                        &made, why, sizeof(why), err, sizeof(err)),
	                 TERN_OK);
	assert_true(made);
	assert_string_equal(why, "key-unparsable");
	make_cert("alien", "alien.test", "DNS:other.test");
	FILE *from = fopen(path_in("alien.key"), "r");
	char kb[4096];
	size_t kn = fread(kb, 1, sizeof(kb), from);
	fclose(from);
	write_file(key, kb, kn);
	assert_int_equal(tls_self_signed_ensure(cert, key, "other.test", (uid_t)-1, (gid_t)-1,
	                                        &made, why, sizeof(why), err, sizeof(err)),
	                 TERN_OK);
	assert_true(made);
	assert_string_equal(why, "key-mismatch");

	/* a name that cannot go into a certificate */
	assert_int_equal(tls_self_signed_make("a,DNS:evil.test", 1, 0, &pem, &plen, &kpem, &klen,
	                                      err, sizeof(err)),
	                 TERN_EINVAL);
	ERR_clear_error();
}

/* ---- the client context ---------------------------------------------------- */

static void test_client_ctx(void **state)
{
	char err[512];
	SSL_CTX *c = tls_client_ctx_new(NULL, false, err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(SSL_CTX_get_min_proto_version(c), TLS1_2_VERSION);
	assert_int_equal(SSL_CTX_get_verify_mode(c), SSL_VERIFY_NONE);
	SSL_CTX_free(c);
	c = tls_client_ctx_new(NULL, true, err, sizeof(err)); /* the system store */
	assert_non_null(c);
	assert_int_equal(SSL_CTX_get_verify_mode(c), SSL_VERIFY_PEER);
	SSL_CTX_free(c);
	/* SNI names a host, never an address (RFC 6066 §3) */
	c = any_client();
	static const struct {
		const char *host, *sni;
	} sni[] = {
	    {"mx.example.test", "mx.example.test"},
	    {"127.0.0.1", NULL},
	    {"::1", NULL},
	    {"[2001:db8::25]", NULL},
	    {"", NULL},
	    {"[not-an-address]", "[not-an-address]"},
	};
	for (size_t i = 0; i < N(sni); i++) {
		SSL *ssl = SSL_new(c);
		assert_int_equal(tls_client_set_sni(ssl, sni[i].host), 0);
		const char *got = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
		if (sni[i].sni ? !got || strcmp(got, sni[i].sni) != 0 : got != NULL)
			fail_msg("case %zu (%s): SNI %s", i, sni[i].host, got ? got : "none");
		SSL_free(ssl);
	}
	SSL_CTX_free(c);
	assert_null(tls_client_ctx_new(path_in("absent.pem"), true, err, sizeof(err)));
	assert_non_null(strstr(err, "tls: cannot read ca_file"));
	write_file(path_in("empty-ca.pem"), "nothing here\n", 13);
	assert_null(tls_client_ctx_new(path_in("empty-ca.pem"), true, err, sizeof(err)));
	assert_non_null(strstr(err, "no PEM certificate"));
	ERR_clear_error();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_name_match),
	    cmocka_unit_test(test_sni_picks_certificate),
	    cmocka_unit_test(test_protocol_floor_and_log_words),
	    cmocka_unit_test(test_load_errors),
	    cmocka_unit_test(test_reload),
	    cmocka_unit_test(test_self_signed),
	    cmocka_unit_test(test_client_ctx),
	};
	return cmocka_run_group_tests(tests, setup_dir, remove_dir);
}
