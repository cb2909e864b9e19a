-- flowpipe: stage=2 title="Stage 2: allow-dns (DNS to kube-dns:53 through the DNS proxy)"
--
-- allow-dns adds an L7 DNS rule (matchPattern "*") for egress to kube-dns:53, so DNS of shop
-- now goes through Cilium's DNS proxy (dns-request/dns-response proxy FORWARDED) and the
-- port-53 policy verdict names allow-dns (L3-L4). allow-all still covers everything else.

-- rule: dns-through-proxy
-- why: allow-dns has an L7 DNS rule, so DNS of shop must be seen by the DNS proxy and forwarded (dns-request proxy FORWARDED)
-- expect: all
-- assert: verdict = 'FORWARDED'
SELECT * FROM l7_dns
WHERE src_namespace = 'shop' OR dst_namespace = 'shop';

-- rule: backend-name-resolved
-- why: nslookup backend.shop.svc.cluster.local from frontend must be answered through the proxy with an address
-- expect: at_least 1
-- The trailing dot of the query name is trimmed, and either side may be shop: Hubble
-- versions differ in which endpoint a DNS response flow names as its source.
SELECT * FROM l7_dns
WHERE (src_namespace = 'shop' OR dst_namespace = 'shop')
  AND l7_type = 'RESPONSE' AND verdict = 'FORWARDED'
  AND rtrim(dns_query, '.') = 'backend.shop.svc.cluster.local'
  AND dns_rcode = 0 AND len(dns_ips) > 0;

-- rule: dns-verdict-by-allow-dns
-- why: the port-53 policy verdict of shop must name allow-dns with match L3-L4 (policy-verdict:L3-L4 EGRESS ALLOWED), not allow-all
-- expect: all
-- hubble prints ALLOWED for FORWARDED and REDIRECTED alike, and with an L7 DNS rule real
-- Cilium often reports REDIRECTED (to the DNS proxy): both are accepted.
-- assert: verdict IN ('FORWARDED', 'REDIRECTED')
-- assert: allowed_by(egress_allowed_by, 'allow-dns')
-- assert: policy_match = 'L3-L4'
SELECT * FROM policy_verdicts
WHERE src_namespace = 'shop' AND dst_port = 53 AND traffic_direction = 'EGRESS';

-- rule: fe-be-still-allowed-by-allow-all
-- why: stage 2 only adds allow-dns: frontend->backend:80 must still be allowed by allow-all (the L4 policy pair comes in stage 3)
-- expect: all
-- min_flows: 0
-- No evidence needed (the stage is about DNS), but frontend->backend traffic, if any, tells
-- stage 2 apart from the later stages.
-- assert: verdict = 'FORWARDED'
-- assert: allowed_by(egress_allowed_by, 'allow-all') OR allowed_by(ingress_allowed_by, 'allow-all')
SELECT * FROM policy_verdicts
WHERE src_namespace = 'shop' AND has_label(src_labels, 'app=frontend')
  AND dst_namespace = 'shop' AND has_label(dst_labels, 'app=backend')
  AND dst_port = 80;

-- rule: no-policy-drops-in-shop
-- why: allow-all is still in place and allow-dns allows every name, so no flow of shop may be dropped by policy
-- expect: none
SELECT * FROM drops
WHERE (src_namespace = 'shop' OR dst_namespace = 'shop')
  AND (drop_reason_desc IN ('POLICY_DENIED', 'POLICY_DENY') OR event IN ('policy-verdict', 'l7'));
