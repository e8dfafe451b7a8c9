{{/*
The alerting rules as a Prometheus rule `groups:` list, used by prometheusrule.yaml (and by deploy/monitoring/ as a
plain rules file). Only the refresher's own metric names are used, so they cover both the Deployment and sidecars.
*/}}

{{/* A metric selector: (list $ "metric_name" "extra matchers") -> metric_name{extra,<prometheusRule.selector>} */}}
{{- define "ls-token-refresher.promSeries" -}}
{{- $root := index . 0 }}
{{- $matchers := list }}
{{- with index . 2 }}{{ $matchers = append $matchers . }}{{ end }}
{{- with $root.Values.prometheusRule.selector }}{{ $matchers = append $matchers . }}{{ end }}
{{- if $matchers }}
{{- printf "%s{%s}" (index . 1) (join "," $matchers) }}
{{- else }}
{{- index . 1 }}
{{- end }}
{{- end }}

{{/* Common alert labels and annotations: (list $ "AlertName" "severity") */}}
{{- define "ls-token-refresher.alertLabels" -}}
{{- $root := index . 0 -}}
labels:
  severity: {{ index . 2 }}
  {{- with $root.Values.prometheusRule.additionalAlertLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{- define "ls-token-refresher.runbook" -}}
{{- $root := index . 0 }}
{{- with $root.Values.prometheusRule.runbookBaseUrl }}
{{- printf "runbook_url: %s" (printf "%s/%s" (trimSuffix "/" .) (index $ 1 | lower) | quote) }}
{{- end }}
{{- end }}

{{- define "ls-token-refresher.alertRules" -}}
{{- $a := .Values.prometheusRule.alerts }}
{{- $failure := include "ls-token-refresher.promSeries" (list . "ls_token_refresher_refresh_total" "result=\"failure\"") }}
{{- $success := include "ls-token-refresher.promSeries" (list . "ls_token_refresher_refresh_total" "result=\"success\"") }}
{{- $rejected := include "ls-token-refresher.promSeries" (list . "ls_token_refresher_refresh_errors_total" "reason=~\"unauthorized|expired_pat|revoked_pat|wrong_token_type|inactive_user\"") }}
{{- $exp := include "ls-token-refresher.promSeries" (list . "ls_token_refresher_token_expiration_timestamp_seconds" "") }}
{{- $valid := include "ls-token-refresher.promSeries" (list . "ls_token_refresher_token_valid" "") }}
{{- $last := include "ls-token-refresher.promSeries" (list . "ls_token_refresher_last_success_timestamp_seconds" "") }}
{{- $patExp := include "ls-token-refresher.promSeries" (list . "ls_token_refresher_pat_expiration_timestamp_seconds" "") }}
{{- $rotBad := include "ls-token-refresher.promSeries" (list . "ls_token_refresher_pat_rotations_total" "result=~\"failed|refused\"") }}
{{- $rotGood := include "ls-token-refresher.promSeries" (list . "ls_token_refresher_pat_rotations_total" "result=~\"rotated|recovered\"") }}
{{- $sinkErr := include "ls-token-refresher.promSeries" (list . "ls_token_refresher_sink_write_errors_total" "") }}
{{- $ctlReady := include "ls-token-refresher.promSeries" (list . "ls_token_refresher_controller_token_ready" "") }}
{{- $ctlExp := include "ls-token-refresher.promSeries" (list . "ls_token_refresher_controller_token_expiration_timestamp_seconds" "") }}
{{- /* Standby replicas (leader election) publish nothing: the token alerts are about the leader's. */}}
{{- $standby := printf "(%s == 0)" (include "ls-token-refresher.promSeries" (list . "ls_token_refresher_leader" "")) -}}
- name: ls-token-refresher
  rules:
    {{- with $a.refreshFailing }}{{ if .enabled }}
    - alert: LSTokenRefresherRefreshFailing
      expr: |-
        (sum without (result) (increase({{ $failure }}[5m])) > 0)
        unless
        (sum without (result) (increase({{ $success }}[5m])) > 0)
      for: {{ .for }}
      {{- include "ls-token-refresher.alertLabels" (list $ "LSTokenRefresherRefreshFailing" .severity) | nindent 6 }}
      annotations:
        summary: Label Studio token refreshes keep failing.
        description: >-
          ls-token-refresher {{`{{ $labels.namespace }}/{{ $labels.pod }}`}} ({{`{{ $labels.instance }}`}}) has had
          only failed refreshes for {{ .for }}. It keeps publishing the last good token until that expires; see
          ls_token_refresher_refresh_errors_total for the reason and the pod's Events and logs.
        {{- with include "ls-token-refresher.runbook" (list $ "LSTokenRefresherRefreshFailing") }}{{ . | nindent 8 }}{{ end }}
    {{- end }}{{ end }}
    {{- with $a.patRejected }}{{ if .enabled }}
    - alert: LSTokenRefresherPATRejected
      expr: |-
        (sum without (reason) (increase({{ $rejected }}[5m])) > 0)
        unless ignoring (result)
        (increase({{ $success }}[5m]) > 0)
      for: {{ .for }}
      {{- include "ls-token-refresher.alertLabels" (list $ "LSTokenRefresherPATRejected" .severity) | nindent 6 }}
      annotations:
        summary: Label Studio rejects the Personal Access Token.
        description: >-
          ls-token-refresher {{`{{ $labels.namespace }}/{{ $labels.pod }}`}} ({{`{{ $labels.instance }}`}}) gets
          its PAT refused (unauthorized, expired, revoked, not a refresh token or inactive user). Retrying will not
          help: put a new PAT into the PAT Secret (the refresher picks it up without a restart).
        {{- with include "ls-token-refresher.runbook" (list $ "LSTokenRefresherPATRejected") }}{{ . | nindent 8 }}{{ end }}
    {{- end }}{{ end }}
    {{- with $a.tokenExpiringSoon }}{{ if .enabled }}
    - alert: LSTokenRefresherTokenExpiringSoon
      expr: |-
        ({{ $exp }} - time() < {{ include "ls-token-refresher.seconds" .threshold }})
        and
        ({{ $exp }} - time() > 0)
        unless
        {{ $standby }}
      for: {{ .for }}
      {{- include "ls-token-refresher.alertLabels" (list $ "LSTokenRefresherTokenExpiringSoon" .severity) | nindent 6 }}
      annotations:
        summary: The published Label Studio access token expires soon.
        description: >-
          The token published by ls-token-refresher {{`{{ $labels.namespace }}/{{ $labels.pod }}`}}
          ({{`{{ $labels.instance }}`}}) expires in {{`{{ $value | humanizeDuration }}`}} and has not been replaced.
        {{- with include "ls-token-refresher.runbook" (list $ "LSTokenRefresherTokenExpiringSoon") }}{{ . | nindent 8 }}{{ end }}
    {{- end }}{{ end }}
    {{- with $a.tokenExpired }}{{ if .enabled }}
    - alert: LSTokenRefresherTokenExpired
      expr: |-
        (
          ({{ $valid }} == 0)
          or
          ({{ $exp }} > 0 and {{ $exp }} <= time())
        )
        unless
        {{ $standby }}
      for: {{ .for }}
      {{- include "ls-token-refresher.alertLabels" (list $ "LSTokenRefresherTokenExpired" .severity) | nindent 6 }}
      annotations:
        summary: No valid Label Studio access token is published.
        description: >-
          ls-token-refresher {{`{{ $labels.namespace }}/{{ $labels.pod }}`}} ({{`{{ $labels.instance }}`}}) has no
          valid, unexpired token published (expired, or never obtained): its consumers' API calls fail now.
        {{- with include "ls-token-refresher.runbook" (list $ "LSTokenRefresherTokenExpired") }}{{ . | nindent 8 }}{{ end }}
    {{- end }}{{ end }}
    {{- with $a.noRecentSuccess }}{{ if .enabled }}
    - alert: LSTokenRefresherNoRecentSuccess
      expr: |-
        (time() - {{ $last }} > {{ include "ls-token-refresher.seconds" .threshold }})
        and
        ({{ $last }} > 0)
        unless
        {{ $standby }}
      for: {{ .for }}
      {{- include "ls-token-refresher.alertLabels" (list $ "LSTokenRefresherNoRecentSuccess" .severity) | nindent 6 }}
      annotations:
        summary: No successful Label Studio token refresh for a long time.
        description: >-
          ls-token-refresher {{`{{ $labels.namespace }}/{{ $labels.pod }}`}} ({{`{{ $labels.instance }}`}}) last
          refreshed successfully {{`{{ $value | humanizeDuration }}`}} ago (threshold {{ .threshold }}).
        {{- with include "ls-token-refresher.runbook" (list $ "LSTokenRefresherNoRecentSuccess") }}{{ . | nindent 8 }}{{ end }}
    {{- end }}{{ end }}
    {{- with $a.patExpiringSoon }}{{ if .enabled }}
    {{- $warn := include "ls-token-refresher.seconds" .warningThreshold | int }}
    {{- $crit := include "ls-token-refresher.seconds" .criticalThreshold | int }}
    {{- if le $warn $crit }}{{ fail "prometheusRule.alerts.patExpiringSoon: warningThreshold must be longer than criticalThreshold" }}{{ end }}
    - alert: LSTokenRefresherPATExpiringSoon
      expr: |-
        ({{ $patExp }} - time() < {{ $warn }})
        and
        ({{ $patExp }} - time() >= {{ $crit }})
      for: {{ .for }}
      {{- include "ls-token-refresher.alertLabels" (list $ "LSTokenRefresherPATExpiringSoon" "warning") | nindent 6 }}
      annotations:
        summary: The Label Studio Personal Access Token expires soon.
        description: >-
          The PAT used by ls-token-refresher {{`{{ $labels.namespace }}/{{ $labels.pod }}`}} expires in
          {{`{{ $value | humanizeDuration }}`}}. Create a new PAT and put it into the PAT Secret, or let the
          refresher rotate it (pat.rotation); with rotation on, a rotation is late: see
          LSTokenRefresherPATRotationFailing.
        {{- with include "ls-token-refresher.runbook" (list $ "LSTokenRefresherPATExpiringSoon") }}{{ . | nindent 8 }}{{ end }}
    - alert: LSTokenRefresherPATExpiringSoon
      expr: |-
        ({{ $patExp }} - time() < {{ $crit }})
        and
        ({{ $patExp }} > 0)
      for: {{ .for }}
      {{- include "ls-token-refresher.alertLabels" (list $ "LSTokenRefresherPATExpiringSoon" "critical") | nindent 6 }}
      annotations:
        summary: The Label Studio Personal Access Token expires very soon or has expired.
        description: >-
          The PAT used by ls-token-refresher {{`{{ $labels.namespace }}/{{ $labels.pod }}`}} expires in
          {{`{{ $value | humanizeDuration }}`}} (negative: already expired). Create a new PAT and put it into the
          PAT Secret (with pat.rotation on, a rotation is late: see LSTokenRefresherPATRotationFailing).
        {{- with include "ls-token-refresher.runbook" (list $ "LSTokenRefresherPATExpiringSoon") }}{{ . | nindent 8 }}{{ end }}
    {{- end }}{{ end }}
    {{- with $a.patRotationFailing }}{{ if .enabled }}
    - alert: LSTokenRefresherPATRotationFailing
      expr: |-
        (sum without (result) (increase({{ $rotBad }}[{{ .window }}])) > 0)
        unless
        (sum without (result) (increase({{ $rotGood }}[{{ .window }}])) > 0)
      for: {{ .for }}
      {{- include "ls-token-refresher.alertLabels" (list $ "LSTokenRefresherPATRotationFailing" .severity) | nindent 6 }}
      annotations:
        summary: The Label Studio PAT rotation fails.
        description: >-
          ls-token-refresher {{`{{ $labels.namespace }}/{{ $labels.pod }}`}} ({{`{{ $labels.instance }}`}}) had a PAT
          rotation fail or refused within {{ .window }}, and none succeeded in that time: the PAT ages towards its
          expiry. The log line of the attempt names the reason. Check that the Role may `patch` the PAT Secret
          (pat.rotation adds that rule; with rbac.create=false grant it yourself) and that no other field manager
          (kubectl apply, a GitOps tool, an ExternalSecret) owns or syncs the PAT key. See the chart README's
          "PAT rotation".
        {{- with include "ls-token-refresher.runbook" (list $ "LSTokenRefresherPATRotationFailing") }}{{ . | nindent 8 }}{{ end }}
    {{- end }}{{ end }}
    {{- with $a.sinkWriteErrors }}{{ if .enabled }}
    - alert: LSTokenRefresherSinkWriteErrors
      expr: |-
        increase({{ $sinkErr }}[5m]) > 0
      for: {{ .for }}
      {{- include "ls-token-refresher.alertLabels" (list $ "LSTokenRefresherSinkWriteErrors" .severity) | nindent 6 }}
      annotations:
        summary: ls-token-refresher cannot publish the token.
        description: >-
          ls-token-refresher {{`{{ $labels.namespace }}/{{ $labels.pod }}`}} ({{`{{ $labels.instance }}`}}) fails to
          write the token to its {{`{{ $labels.sink }}`}} sink (RBAC, a conflicting field manager, a full or
          read-only volume): consumers keep the previous token until it expires.
        {{- with include "ls-token-refresher.runbook" (list $ "LSTokenRefresherSinkWriteErrors") }}{{ . | nindent 8 }}{{ end }}
    {{- end }}{{ end }}
    {{- with $a.controllerTokenNotReady }}{{ if .enabled }}
    - alert: LSTokenControllerTokenNotReady
      expr: |-
        {{ $ctlReady }} == 0
      for: {{ .for }}
      {{- include "ls-token-refresher.alertLabels" (list $ "LSTokenControllerTokenNotReady" .severity) | nindent 6 }}
      annotations:
        summary: A LabelStudioToken is not Ready.
        description: >-
          LabelStudioToken {{`{{ $labels.name }}`}} (namespace label `namespace`, or `exported_namespace` when the
          scrape renamed it) has been Ready=False for {{ .for }}: `kubectl get lstoken` shows the reason. Its Secret
          keeps the last good token until that expires.
        {{- with include "ls-token-refresher.runbook" (list $ "LSTokenControllerTokenNotReady") }}{{ . | nindent 8 }}{{ end }}
    {{- end }}{{ end }}
    {{- with $a.controllerTokenExpiringSoon }}{{ if .enabled }}
    - alert: LSTokenControllerTokenExpiringSoon
      expr: |-
        ({{ $ctlExp }} - time() < {{ include "ls-token-refresher.seconds" .threshold }})
      for: {{ .for }}
      {{- include "ls-token-refresher.alertLabels" (list $ "LSTokenControllerTokenExpiringSoon" .severity) | nindent 6 }}
      annotations:
        summary: The token in a LabelStudioToken's Secret expires soon or has expired.
        description: >-
          The token the controller keeps for LabelStudioToken {{`{{ $labels.name }}`}} expires in
          {{`{{ $value | humanizeDuration }}`}} (negative: expired) and has not been replaced.
        {{- with include "ls-token-refresher.runbook" (list $ "LSTokenControllerTokenExpiringSoon") }}{{ . | nindent 8 }}{{ end }}
    {{- end }}{{ end }}
{{- end }}
