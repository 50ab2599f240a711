/*
 * arc_internal.h — what arc_verify.c and arc_seal.c share and nobody else
 * sees: finding the ARC Sets of a header block and the ARC-Seal hash.
 */
#ifndef TERN_POLICY_ARC_INTERNAL_H
#define TERN_POLICY_ARC_INTERNAL_H

#include "policy/arc.h"
#include "policy/dkim_internal.h"

enum arc_kind { ARC_AAR = 0, ARC_AMS = 1, ARC_AS = 2 };

/* Where each instance's fields are: field indexes, (size_t)-1 when absent. */
struct arc_sets {
	size_t idx[ARC_MAX_SETS + 1][3];
	unsigned count[ARC_MAX_SETS + 1][3];
	unsigned max;    /* highest valid instance seen (0: none) */
	size_t n_fields; /* ARC fields seen, valid or not */
	const char *why; /* NULL when the structure is sound (§5.2 step 3 A, B) */
};

/* Finds the ARC fields of hdr (indexed as f[0..nf)). Pure. */
void arc_sets_collect(const char *hdr, const struct dkim_field *f, size_t nf, struct arc_sets *s);

/* Offset, within field f of hdr, of the value (just after the colon). */
size_t arc_value_off(const char *hdr, const struct dkim_field *f);
/* The value's length: to the end of the field, its final CRLF excluded. */
size_t arc_value_len(const char *hdr, const struct dkim_field *f, size_t off);

/*
 * The ARC-Seal hash (§5.1.1): SHA-256 over fields[0..n) (whole fields,
 * each relaxed-canonicalized, CRLF added when missing), then the seal's own
 * field sigfield[0..siglen) (b= value already blanked, no CRLF) relaxed and
 * without its CRLF. TERN_OK, TERN_ENOMEM, TERN_EIO.
 */
int arc_seal_hash(const struct strv *fields, size_t n, const char *sigfield, size_t siglen,
                  uint8_t out[32]);

#endif
