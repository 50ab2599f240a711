/* timefmt.c — RFC 5322 §3.3 date-time in UTC (see timefmt.h). */
#include "core/timefmt.h"

#include <stdio.h>
#include <time.h>

bool tern_rfc5322_date(int64_t t, char *out, size_t outlen)
{
	static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	struct tm tm;

	if (outlen > 0)
		out[0] = '\0';
	if (t < 0 || t > 253402300799LL) /* after 9999-12-31 the year has 5 digits */
		return false;
	time_t tt = (time_t)t;
	if (!gmtime_r(&tt, &tm) || tm.tm_wday < 0 || tm.tm_wday > 6 || tm.tm_mon < 0 ||
	    tm.tm_mon > 11)
		return false;
	int n = snprintf(out, outlen, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday],
	                 tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
	                 tm.tm_sec);
	if (n <= 0 || (size_t)n >= outlen) {
		if (outlen > 0)
			out[0] = '\0';
		return false;
	}
	return true;
}
